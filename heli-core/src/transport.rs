//! How requests travel between clients and the controller.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, ErrorKind};
use crate::process::ProcessId;
use crate::protocol::{dialect_of_line, parse_request, Dialect, Reply, Request};

/// A way for clients to reach a controller: named pipes, a Unix socket, ...
///
/// A `Transport` value is an *address* (a directory, a socket path). The
/// controller turns it into a [`Listener`] with [`listen`](Transport::listen);
/// a client turns it into a [`Connection`] with
/// [`connect`](Transport::connect). Both sides speak the line protocol of
/// [`protocol`](crate::protocol).
pub trait Transport {
    /// The controller's end.
    type Listener: Listener;
    /// A client's end.
    type Connection: Connection;

    /// Creates the controller's end (files, sockets) and starts accepting.
    ///
    /// # Errors
    ///
    /// When the address is unsafe to use, already served by a live
    /// controller, or cannot be created; the error says which.
    fn listen(&self) -> io::Result<Self::Listener>;

    /// Connects to a listening controller, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// `NotFound` or `ConnectionRefused` when no controller listens there,
    /// `TimedOut` when the deadline passed.
    fn connect(&self, timeout: Duration) -> io::Result<Self::Connection>;

    /// Where this transport listens, for messages to the user.
    fn describe(&self) -> String;

    /// Whether its listener tells the controller who sends each request
    /// ([`Peer::credentials`]); default: no. The controller says so in
    /// `STATUS` (`clients=authenticated` or `clients=unauthenticated`).
    fn authenticates(&self) -> bool {
        false
    }

    /// Whether its listener can send file descriptors with a reply
    /// ([`Outgoing::fds`], as a Unix socket's `SCM_RIGHTS` does) and its
    /// connections receive them ([`Connection::round_trip_with_fds`]);
    /// default: no. The controller refuses `AGENT_ATTACH` on a transport
    /// that cannot: its reply is the client's ends of pdb's sockets.
    fn passes_fds(&self) -> bool {
        false
    }
}

/// The controller's end of a [`Transport`].
///
/// The controller runs [`serve`](Listener::serve) on a thread of its own:
/// it delivers every request as an [`Event`] and writes back the reply the
/// controller gives. Dropping the listener removes what
/// [`Transport::listen`] created.
pub trait Listener: Send + 'static {
    /// Interrupts a running [`serve`](Listener::serve).
    type Stopper: Stopper;

    /// A handle that makes [`serve`](Listener::serve) return.
    fn stopper(&self) -> Self::Stopper;

    /// Serves requests until stopped or until `events` has no receiver.
    ///
    /// Must not block forever on any one client: every read and write of a
    /// client has a deadline.
    ///
    /// # Errors
    ///
    /// When the listener itself fails (not when a client misbehaves).
    fn serve(&mut self, events: &Sender<Event>) -> io::Result<()>;

    /// Hands the listener the controller's note of which connections hold
    /// grants, before [`serve`](Listener::serve): a listener that closes
    /// idle connections must never close those (their grants would go with
    /// them). Default: ignored.
    fn watch_grant(&mut self, holder: GrantHolder) {
        let _ = holder;
    }
}

/// Which connections hold grants now, as the controller keeps it up to
/// date for its listener (see [`Listener::watch_grant`]), and the way back:
/// how the controller has the listener close a connection (a client whose
/// time limit is up). Clones share it.
///
/// # Examples
///
/// ```
/// use heli_core::GrantHolder;
/// use std::sync::{Arc, Mutex};
///
/// let holders = GrantHolder::default();
/// assert!(!holders.holds(7));
///
/// // A listener that can close its connections says how.
/// let closed = Arc::new(Mutex::new(Vec::new()));
/// let seen = closed.clone();
/// holders.on_close(move |connection, why| seen.lock().unwrap().push((connection, why.to_owned())));
/// ```
#[derive(Clone, Default)]
pub struct GrantHolder(Arc<Mutex<Holders>>);

/// What a [`GrantHolder`] shares.
#[derive(Default)]
struct Holders {
    held: Vec<u64>,
    closer: Option<Arc<Closer>>,
}

/// How a listener closes connection `.0`, telling its client `.1`.
type Closer = dyn Fn(u64, &str) + Send + Sync;

impl fmt::Debug for GrantHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holders = self.lock();
        f.debug_struct("GrantHolder")
            .field("held", &holders.held)
            .field("closes", &holders.closer.is_some())
            .finish()
    }
}

impl GrantHolder {
    /// Whether `connection` (a [`Peer::connection`]) holds a grant.
    pub fn holds(&self, connection: u64) -> bool {
        connection != 0 && self.lock().held.contains(&connection)
    }

    /// How the listener closes one of its connections when the controller
    /// asks: `close(connection, why)` must return at once (not wait for
    /// the client), and tell the client `why` if it can. A listener
    /// without it leaves its connections open (default).
    pub fn on_close(&self, close: impl Fn(u64, &str) + Send + Sync + 'static) {
        self.lock().closer = Some(Arc::new(close));
    }

    /// Notes that `connections` hold the grants now (connectionless peers,
    /// 0, hold none).
    pub(crate) fn set(&self, connections: impl IntoIterator<Item = u64>) {
        let mut holders = self.lock();
        let held = &mut holders.held;
        held.clear();
        held.extend(
            connections
                .into_iter()
                .filter(|&connection| connection != 0),
        );
        held.sort_unstable();
        held.dedup();
    }

    /// Has the listener close `connection` (none for 0), telling its client
    /// `why`; whether the listener can.
    pub(crate) fn close(&self, connection: u64, why: &str) -> bool {
        let closer = self.lock().closer.clone();
        match closer {
            Some(close) if connection != 0 => {
                close(connection, why);
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holders> {
        // The list is replaced whole: one a panic left is still a list.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Makes a [`Listener::serve`] return; cheap to call more than once.
pub trait Stopper: Send + 'static {
    /// Asks the listener to stop. Returns at once.
    fn stop(&self);
}

/// A client's end of a [`Transport`].
pub trait Connection {
    /// Sends one request line and returns the reply line, both including
    /// their newline, waiting until `deadline` at most.
    ///
    /// # Errors
    ///
    /// `TimedOut` when the deadline passes, `UnexpectedEof` or
    /// `BrokenPipe` when the controller went away.
    fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>>;

    /// As [`round_trip`](Connection::round_trip), and returns the file
    /// descriptors that came with the reply too, `max_fds` at most (any
    /// more are closed). By default none: a transport that cannot pass
    /// them (see [`Transport::passes_fds`]) gets none.
    ///
    /// # Errors
    ///
    /// As [`round_trip`](Connection::round_trip).
    fn round_trip_with_fds(
        &mut self,
        line: &[u8],
        deadline: Instant,
        max_fds: usize,
    ) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let _ = max_fds;
        Ok((self.round_trip(line, deadline)?, Vec::new()))
    }

    /// Sends `request` and parses its reply.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`], [`ErrorKind::NotRunning`],
    /// [`ErrorKind::MalformedReply`] or [`ErrorKind::Io`]. An `ERROR:` reply
    /// is returned as `Ok(Reply::Error(..))`.
    fn request(&mut self, request: Request, timeout: Duration) -> Result<Reply, Error> {
        let line = request.encode(Dialect::Upper);
        let reply = self
            .round_trip(line.as_bytes(), Instant::now() + timeout)
            .map_err(|err| sending_failed(request, timeout, err))?;
        parse_reply(reply)
    }

    /// As [`request`](Connection::request), and returns the file
    /// descriptors that came with the reply too (`max_fds` at most; see
    /// [`round_trip_with_fds`](Connection::round_trip_with_fds)).
    ///
    /// # Errors
    ///
    /// As [`request`](Connection::request).
    fn request_with_fds(
        &mut self,
        request: Request,
        timeout: Duration,
        max_fds: usize,
    ) -> Result<(Reply, Vec<OwnedFd>), Error> {
        let line = request.encode(Dialect::Upper);
        let (reply, fds) = self
            .round_trip_with_fds(line.as_bytes(), Instant::now() + timeout, max_fds)
            .map_err(|err| sending_failed(request, timeout, err))?;
        Ok((parse_reply(reply)?, fds))
    }
}

/// The error for a round trip of `request` that failed with `err`.
fn sending_failed(request: Request, timeout: Duration, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::TimedOut => Error::new(
            ErrorKind::Timeout,
            format!(
                "Timeout waiting for response to {request} ({:.1} s): the controller may be busy or hung",
                timeout.as_secs_f64()
            ),
        ),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => {
            Error::io("The controller went away before answering", err)
        }
        _ => Error::io(format!("Sending {request}"), err),
    }
}

/// A reply line, parsed.
fn parse_reply(reply: Vec<u8>) -> Result<Reply, Error> {
    let text = String::from_utf8(reply).map_err(|_| {
        Error::new(
            ErrorKind::MalformedReply,
            "The controller's reply is not UTF-8",
        )
    })?;
    Reply::parse(&text)
}

/// Who sent a request, as far as the transport can tell.
///
/// A transport reports only what it verified; the controller decides what
/// the peer may do by one policy for every transport (see
/// [`Controller`](crate::Controller)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Tells connections apart within one listener; 0 where a transport has
    /// no connections (named pipes).
    pub connection: u64,
    /// What the transport verified about the process at the other end;
    /// `None` where it cannot authenticate its peers (named pipes).
    pub credentials: Option<Credentials>,
}

/// What a transport verified about a peer (for a Unix socket, from the
/// kernel's `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Its user id.
    pub uid: u32,
    /// The process that connected, when known: `None` when its pid is not
    /// visible here (another pid namespace) or could not be tied to one
    /// process.
    pub process: Option<ProcessId>,
}

impl Peer {
    /// The verified process at the other end, if any.
    pub fn process(&self) -> Option<ProcessId> {
        self.credentials.and_then(|credentials| credentials.process)
    }
}

/// What a [`Listener`] tells the controller.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A request line arrived; answer it with [`Incoming::reply`].
    Request(Incoming),
    /// A connection closed: the controller drops what was tied to it.
    Disconnected(Peer),
}

/// A request waiting for its reply.
#[derive(Debug)]
pub struct Incoming {
    peer: Peer,
    dialect: Dialect,
    request: Result<Request, Error>,
    reply_to: Sender<Outgoing>,
}

/// A reply as a [`Listener`] writes it: the encoded line, and the file
/// descriptors that go with it (none but for `AGENT_ATTACH`; a listener
/// that cannot pass them drops them, which closes them).
#[derive(Debug)]
#[non_exhaustive]
pub struct Outgoing {
    /// The reply line, newline included.
    pub line: String,
    /// The file descriptors to send with the line (a Unix socket's
    /// `SCM_RIGHTS`), in order.
    pub fds: Vec<OwnedFd>,
}

impl Outgoing {
    /// A reply line without file descriptors.
    pub fn line(line: String) -> Outgoing {
        Outgoing {
            line,
            fds: Vec::new(),
        }
    }
}

impl Incoming {
    /// Parses `line` from `peer`; the returned receiver gets the encoded reply
    /// once the controller has answered, or is disconnected if it never will.
    pub fn new(peer: Peer, line: &[u8]) -> (Incoming, Receiver<Outgoing>) {
        let (reply_to, reply) = crossbeam_channel::bounded(1);
        let (request, dialect) = match parse_request(line) {
            Ok((request, dialect)) => (Ok(request), dialect),
            Err(err) => (Err(err), dialect_of_line(line)),
        };
        let incoming = Incoming {
            peer,
            dialect,
            request,
            reply_to,
        };
        (incoming, reply)
    }

    /// Who asked.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The dialect the reply will be written in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The request, or why the line is not one.
    pub fn request(&self) -> Result<Request, &Error> {
        self.request.as_ref().copied()
    }

    /// Answers the request.
    pub fn reply(self, reply: Reply) {
        self.reply_with_fds(reply, Vec::new());
    }

    /// Answers the request with `fds` sent along (see [`Outgoing`]).
    pub fn reply_with_fds(self, reply: Reply, fds: Vec<OwnedFd>) {
        let line = reply.encode(self.dialect);
        // The transport may have given up on the client already: nothing
        // to do (the descriptors are closed).
        let _ = self.reply_to.send(Outgoing { line, fds });
    }
}

/// Hands `line` from `peer` to the controller and waits for its reply.
///
/// This is what a [`Listener`] does with each complete line; an over-long
/// line (`Err` from [`LineBuffer`](crate::protocol::LineBuffer)) is answered
/// here without bothering the controller. Returns `None` when the controller
/// is gone and the listener should stop.
pub fn exchange(
    events: &Sender<Event>,
    peer: Peer,
    line: Result<Vec<u8>, Error>,
) -> Option<Outgoing> {
    match line {
        Ok(line) => {
            let (incoming, reply) = Incoming::new(peer, &line);
            events.send(Event::Request(incoming)).ok()?;
            reply.recv().ok()
        }
        Err(err) => Some(Outgoing::line(Reply::error(&err).encode(Dialect::Upper))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Pid;

    /// A transport that says only what it must, and reaches nothing.
    struct Nowhere;
    struct Deaf;
    struct Quiet;
    impl Transport for Nowhere {
        type Listener = Deaf;
        type Connection = Quiet;
        fn listen(&self) -> io::Result<Deaf> {
            Ok(Deaf)
        }
        fn connect(&self, _: Duration) -> io::Result<Quiet> {
            Err(io::ErrorKind::NotFound.into())
        }
        fn describe(&self) -> String {
            "nowhere".into()
        }
    }
    impl Listener for Deaf {
        type Stopper = Deaf;
        fn stopper(&self) -> Deaf {
            Deaf
        }
        fn serve(&mut self, _: &Sender<Event>) -> io::Result<()> {
            Ok(())
        }
    }
    impl Stopper for Deaf {
        fn stop(&self) {}
    }
    impl Connection for Quiet {
        fn round_trip(&mut self, _: &[u8], _: Instant) -> io::Result<Vec<u8>> {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    #[test]
    fn by_default_a_transport_does_not_authenticate_nor_pass_fds() {
        assert!(!Nowhere.authenticates());
        assert!(!Nowhere.passes_fds());
    }

    /// A connection that answers every line with `READY`.
    struct Ready;
    impl Connection for Ready {
        fn round_trip(&mut self, _: &[u8], _: Instant) -> io::Result<Vec<u8>> {
            Ok(b"READY\n".to_vec())
        }
    }

    #[test]
    fn by_default_a_connection_receives_no_fds() {
        let (reply, fds) = Ready
            .round_trip_with_fds(b"STATUS\n", Instant::now(), 2)
            .unwrap();
        assert_eq!((reply, fds.len()), (b"READY\n".to_vec(), 0));
        let (reply, fds) = Ready
            .request_with_fds(Request::AgentAttach(None), Duration::from_secs(1), 2)
            .unwrap();
        assert_eq!((reply, fds.len()), (Reply::Ready, 0));
        let err = Quiet
            .request_with_fds(Request::AgentAttach(None), Duration::from_secs(1), 2)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message()
                .starts_with("The controller went away before answering"),
            "{err}"
        );
    }

    #[test]
    fn a_reply_carries_its_fds_to_the_listener() {
        let (incoming, replies) = Incoming::new(Peer::default(), b"agent_attach\n");
        let file = std::fs::File::open("/dev/null").unwrap();
        let agent = Reply::Agent {
            pid: Pid::new(7).unwrap(),
            python: "3.14.0".into(),
        };
        incoming.reply_with_fds(agent, vec![file.into()]);
        let outgoing = replies.recv().unwrap();
        assert_eq!(outgoing.line, "agent 7 3.14.0\n");
        assert_eq!(outgoing.fds.len(), 1);
    }

    #[test]
    fn a_peer_names_its_process_only_when_verified() {
        let id = ProcessId {
            pid: Pid::new(77).unwrap(),
            start_time: 5,
        };
        let verified = |process| Peer {
            connection: 1,
            credentials: Some(Credentials { uid: 1000, process }),
        };
        assert_eq!(verified(Some(id)).process(), Some(id));
        assert_eq!(verified(None).process(), None);
        assert_eq!(Peer::default().process(), None);
    }

    #[test]
    fn an_incoming_request_is_answered_in_its_own_dialect() {
        for (line, dialect, reply) in [
            (&b"get_target_pid\n"[..], Dialect::Lower, "ready\n"),
            (b"GET_TARGET_PID\n", Dialect::Upper, "READY\n"),
            (b"bogus\n", Dialect::Lower, "ready\n"),
        ] {
            let (incoming, replies) = Incoming::new(Peer::default(), line);
            assert_eq!(incoming.dialect(), dialect);
            incoming.reply(Reply::Ready);
            let outgoing = replies.recv().unwrap();
            assert_eq!(outgoing.line, reply);
            assert!(outgoing.fds.is_empty());
        }
    }
}
