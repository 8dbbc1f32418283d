//! The client's end: one connection to a session, any number of round
//! trips.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use heli_core::protocol::LineBuffer;
use heli_core::Connection;
use nix::errno::Errno;
use nix::unistd::Uid;

use super::fds::read_line_with_fds;
use super::peer::{connect_socket, credentials};
use super::runtime_dir::{check_socket, open_private_dir, stat_at};
use super::session::{file_names, socket_dir};
use crate::io::{annotate, read_line, refuse, send_all};

/// A client's end of a [`UnixSocketTransport`](crate::UnixSocketTransport):
/// one connection, any number of round trips.
///
/// A round trip that timed out leaves its reply to come: the next round
/// trip skips it, so replies never get mixed up.
#[derive(Debug)]
pub struct UnixSocketConnection {
    stream: UnixStream,
    lines: LineBuffer,
    /// Requests sent whose reply was not read yet.
    unanswered: usize,
    /// A write or read failed other than by timing out.
    broken: bool,
    server_pid: u32,
}

impl UnixSocketConnection {
    /// Connects to the socket `path` of session `name`, within `timeout`:
    /// see [`Transport::connect`](heli_core::Transport::connect).
    pub(super) fn connect(name: &str, path: &Path, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        let (file, _) = file_names(path)?;
        let dir = open_private_dir(socket_dir(path)).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => not_found(name, path),
            _ => err,
        })?;
        match stat_at(&dir, file) {
            Ok(stat) => check_socket(&stat, path)?,
            Err(Errno::ENOENT) => return Err(not_found(name, path)),
            Err(err) => return Err(annotate(err.into(), path)),
        }
        let stream = connect_socket(path, deadline).map_err(|err| {
            match err.raw_os_error().map(Errno::from_raw) {
                Some(Errno::ENOENT) => not_found(name, path),
                Some(Errno::ECONNREFUSED) => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("session {name} is gone (stale socket {})", path.display()),
                ),
                _ => err,
            }
        })?;
        let server = credentials(&stream)?;
        let me = Uid::effective().as_raw();
        if server.uid() != me {
            return Err(refuse(
                path,
                &format!("is served by uid {}, not by you (uid {me})", server.uid()),
            ));
        }
        Ok(UnixSocketConnection {
            stream,
            lines: LineBuffer::for_replies(),
            unanswered: 0,
            broken: false,
            server_pid: u32::try_from(server.pid()).unwrap_or(0),
        })
    }

    /// The controller's process id, as the kernel saw it listen (0 if
    /// unknown).
    pub fn server_pid(&self) -> u32 {
        self.server_pid
    }

    /// Reads a reply to an earlier request, which nobody waits for.
    fn read_reply(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let read = read_line(&self.stream, &mut self.lines, deadline);
        self.settle(read)
    }

    /// Reads a reply with the file descriptors that came with it.
    fn read_reply_with_fds(
        &mut self,
        deadline: Instant,
        max_fds: usize,
    ) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let read = read_line_with_fds(self.stream.as_fd(), &mut self.lines, deadline, max_fds);
        self.settle(read)
    }

    /// Counts a reply read (`Ok`) as answered; notes a failure other than
    /// a timeout as breaking the connection.
    fn settle<T>(&mut self, read: io::Result<T>) -> io::Result<T> {
        match read {
            Ok(reply) => {
                self.unanswered = self.unanswered.saturating_sub(1);
                Ok(reply)
            }
            Err(err) if err.kind() == io::ErrorKind::TimedOut => Err(err),
            Err(err) => {
                self.broken = true;
                Err(match err.kind() {
                    io::ErrorKind::ConnectionReset => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the controller closed the connection",
                    ),
                    _ => err,
                })
            }
        }
    }
}

impl Connection for UnixSocketConnection {
    /// Reads the reply as [`round_trip_with_fds`](Self::round_trip_with_fds)
    /// does: any file descriptor that came with it is closed.
    fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
        Ok(self.round_trip_with_fds(line, deadline, 0)?.0)
    }

    /// As [`round_trip`](Connection::round_trip), reading the reply with
    /// `recvmsg(2)`: the file descriptors that came with it (`max_fds` at
    /// most, close-on-exec; any more are closed).
    fn round_trip_with_fds(
        &mut self,
        line: &[u8],
        deadline: Instant,
        max_fds: usize,
    ) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        if let Some(why) = self.send_request(line, deadline)? {
            return Ok((why, Vec::new()));
        }
        self.read_reply_with_fds(deadline, max_fds)
    }
}

impl UnixSocketConnection {
    /// Sends request `line` once the late replies to earlier requests are
    /// read; `Some` reply when the controller closed the connection saying
    /// why.
    fn send_request(&mut self, line: &[u8], deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection to the controller failed earlier; connect again",
            ));
        }
        // Late replies to requests that timed out come first.
        while self.unanswered > 0 {
            self.read_reply(deadline)?;
        }
        if let Err(err) = send_all(&self.stream, line, deadline, None) {
            self.broken = true;
            // Closed by the controller (idle too long, say), which may
            // have said why: that is the answer.
            if let Ok(why) = read_line(&self.stream, &mut self.lines, Instant::now()) {
                return Ok(Some(why));
            }
            return Err(err);
        }
        self.unanswered += line.iter().filter(|&&b| b == b'\n').count();
        Ok(None)
    }
}

/// No session `name` at `path`.
fn not_found(name: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no session {name} at {}", path.display()),
    )
}
