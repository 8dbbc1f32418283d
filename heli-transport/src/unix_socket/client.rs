//! The client's end: one connection to a session, any number of round
//! trips.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use heli_core::protocol::LineBuffer;
use heli_core::Connection;

use crate::io::{read_line, send_all};

/// A client's end of a [`UnixSocketTransport`]: one connection, any number
/// of round trips.
///
/// A round trip that timed out leaves its reply to come: the next round
/// trip skips it, so replies never get mixed up.
#[derive(Debug)]
pub struct UnixSocketConnection {
    pub(super) stream: UnixStream,
    pub(super) lines: LineBuffer,
    /// Requests sent whose reply was not read yet.
    pub(super) unanswered: usize,
    /// A write or read failed other than by timing out.
    pub(super) broken: bool,
    pub(super) server_pid: u32,
}

impl UnixSocketConnection {
    /// The controller's process id, as the kernel saw it listen (0 if
    /// unknown).
    pub fn server_pid(&self) -> u32 {
        self.server_pid
    }

    fn read_reply(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        match read_line(&self.stream, &mut self.lines, deadline) {
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
    fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
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
            return Err(err);
        }
        self.unanswered += line.iter().filter(|&&b| b == b'\n').count();
        self.read_reply(deadline)
    }
}
