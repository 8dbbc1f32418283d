//! Serving one accepted connection: reading request lines within their
//! deadlines, answering them, closing it once idle too long, and telling
//! the controller when it closes.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use heli_core::protocol::{Dialect, LineBuffer, Reply};
use heli_core::{Credentials, Event, Incoming, LogLimit, Outgoing, Peer, Stopper};
use heli_proc::ProcessHandle;
use log::{debug, warn};
use nix::errno::Errno;
use nix::poll::PollFlags;

use super::connections::{Connections, Slot};
use super::fds::send_with_fds;
use crate::io::wait_any;
use crate::stop::StopSignal;

/// How long a client may take to finish a request line it has begun.
const PARTIAL_LINE_DEADLINE: Duration = Duration::from_secs(2);
/// How long writing a reply to a client may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a stopping listener still waits for the controller's reply to
/// a request it had passed on.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// One accepted, authenticated connection and what serving it needs.
pub(super) struct Served<'a> {
    /// The session's name.
    pub(super) session: &'a str,
    /// The listener's stop signal: it ends the connection, and a
    /// connection that finds the controller gone raises it.
    pub(super) stop: &'a StopSignal,
    /// The connection, as the listener's table holds it too.
    pub(super) slot: Arc<Slot>,
    /// The table, which counts the connection out when this is dropped.
    pub(super) connections: &'a Connections,
    /// The peer as admitted.
    pub(super) peer: Peer,
    /// The process that connected, if it could be told: once it has
    /// exited, requests come with no process (see [`Served::asking`]).
    pub(super) process: Option<ProcessHandle>,
    pub(super) events: &'a Sender<Event>,
    pub(super) stopping: Receiver<()>,
    /// The listener's limit on warnings peers cause.
    pub(super) warnings: &'a Mutex<LogLimit<i32>>,
    /// The pid that connected, as the kernel said.
    pub(super) pid: i32,
}

/// What became of a request passed on to the controller.
enum Answer {
    Reply(Outgoing),
    /// Close the connection (the listener is stopping).
    Close,
    /// The controller is gone: stop the listener.
    Gone,
}

impl Served<'_> {
    pub(super) fn run(self) {
        debug!(
            "client {:?} connected to session {}",
            self.peer, self.session
        );
        self.serve_lines();
        let (peer, events, stopping) = (self.peer, self.events, self.stopping.clone());
        // Counted out, and closed.
        drop(self);
        debug!("client {peer:?} disconnected");
        select! {
            send(events, Event::Disconnected(peer)) -> _ => {}
            recv(stopping) -> _ => {}
        }
    }

    /// Reads request lines and answers them until the client leaves, breaks
    /// a deadline, or the listener stops.
    fn serve_lines(&self) {
        let stream = &self.slot.stream;
        let stop = self.stop.as_fd();
        let mut lines = LineBuffer::new();
        // When the unfinished line began.
        let mut partial_since: Option<Instant> = None;
        let mut buf = [0u8; 4096];
        loop {
            let deadline = match partial_since {
                Some(since) => since + PARTIAL_LINE_DEADLINE,
                None => {
                    let since = self.slot.idle_since().unwrap_or_else(Instant::now);
                    since + self.connections.idle_timeout()
                }
            };
            let seen = match wait_any(
                &[
                    (stream.as_fd(), PollFlags::POLLIN),
                    (stop, PollFlags::POLLIN),
                ],
                Some(deadline),
            ) {
                Ok(seen) => seen,
                Err(err) if err.kind() == io::ErrorKind::TimedOut && partial_since.is_some() => {
                    let allowed = self
                        .warnings
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .check(self.pid, Instant::now());
                    if let Some(note) = allowed {
                        warn!(
                            "closing the connection of {:?}: its request line was not finished within {PARTIAL_LINE_DEADLINE:?}{note}",
                            self.peer
                        );
                    }
                    let reply = Reply::Error(format!(
                        "Request line not finished within {} s; closing the connection",
                        PARTIAL_LINE_DEADLINE.as_secs()
                    ));
                    let _ = self.send(Outgoing::line(reply.encode(Dialect::Upper)));
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    if self.connections.holds_grant(self.slot.id) {
                        // Its grant would go with it: idle as long as it likes.
                        self.slot.rest();
                        continue;
                    }
                    let idle = self.connections.idle_timeout();
                    let why = format!(
                        "Connection closed: idle for {} s; connect again",
                        idle.as_secs_f64()
                    );
                    if self.slot.close_if_idle(&why) {
                        debug!(
                            "closed the connection of {:?}: idle for {idle:?}",
                            self.peer
                        );
                    }
                    return;
                }
                Err(err) => {
                    warn!("connection of {:?}: {err}", self.peer);
                    return;
                }
            };
            if !seen[1].is_empty() {
                return;
            }
            // Closed to make room for another connection.
            if !self.slot.begin() {
                return;
            }
            let read_at = Instant::now();
            match nix::unistd::read(stream, &mut buf) {
                Ok(0) => return,
                Ok(n) => lines.extend(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    if partial_since.is_none() {
                        self.slot.rest();
                    }
                    continue;
                }
                Err(err) => {
                    debug!("reading from {:?}: {err}", self.peer);
                    return;
                }
            }
            let mut answered = false;
            while let Some(line) = lines.next_line() {
                answered = true;
                let reply = match self.answer(line) {
                    Answer::Reply(reply) => reply,
                    Answer::Close => return,
                    Answer::Gone => {
                        self.stop.handle().stop();
                        return;
                    }
                };
                if let Err(err) = self.send(reply) {
                    debug!("cannot answer {:?}: {err}", self.peer);
                    return;
                }
            }
            partial_since = match (lines.has_partial_line(), answered) {
                (false, _) => None,
                (true, true) => Some(read_at),
                (true, false) => partial_since.or(Some(read_at)),
            };
            // Everything answered: idle again. A line begun keeps it busy.
            if partial_since.is_none() {
                self.slot.rest();
            }
        }
    }

    /// Writes `reply`, and sends the file descriptors that go with it (then
    /// closes them here).
    fn send(&self, reply: Outgoing) -> io::Result<()> {
        send_with_fds(
            self.slot.stream.as_fd(),
            reply.line.as_bytes(),
            &reply.fds,
            Instant::now() + WRITE_DEADLINE,
            Some(self.stop.as_fd()),
        )
    }

    /// Who asks now: the peer as admitted while the process that connected
    /// runs; once it has exited, no process (its pid may name another
    /// one by now, even with its start time; a process it left the
    /// connection to is not the one the kernel vouched for).
    fn asking(&self) -> Peer {
        match (&self.process, self.peer.credentials) {
            (Some(process), Some(credentials)) if !process.is_alive() => Peer {
                credentials: Some(Credentials {
                    process: None,
                    ..credentials
                }),
                ..self.peer
            },
            _ => self.peer,
        }
    }

    /// The reply to one line: from the listener itself for an over-long
    /// line, else from the controller.
    fn answer(&self, line: Result<Vec<u8>, heli_core::Error>) -> Answer {
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                return Answer::Reply(Outgoing::line(Reply::error(&err).encode(Dialect::Upper)))
            }
        };
        let (incoming, reply) = Incoming::new(self.asking(), &line);
        let dialect = incoming.dialect();
        select! {
            send(self.events, Event::Request(incoming)) -> sent => {
                if sent.is_err() {
                    return Answer::Gone;
                }
            }
            recv(self.stopping) -> _ => return Answer::Close,
        }
        let reply = select! {
            recv(reply) -> reply => reply.ok(),
            recv(self.stopping) -> _ => match reply.recv_timeout(STOP_GRACE) {
                Ok(reply) => Some(reply),
                Err(_) => return Answer::Close,
            },
        };
        Answer::Reply(reply.unwrap_or_else(|| {
            Outgoing::line(
                Reply::Error("The controller dropped the request without answering".into())
                    .encode(dialect),
            )
        }))
    }
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.connections.remove(self.slot.id);
    }
}
