//! A listener served on a thread, answered by a fake controller thread
//! that records every [`Event`] and answers each request with a closure's
//! reply.

use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use heli_core::protocol::{Reply, Request, Status};
use heli_core::{Client, Connection, ErrorKind, Event, Listener, Peer, Pid, Stopper, Transport};
use heli_transport::{FifoTransport, UnixSocketTransport};

use super::watch::{join_within, wait_until};

/// The pid the fake controller reports for its target.
pub(crate) const TARGET: Pid = Pid::new(4242).unwrap();

/// `raw` as a pid.
pub(crate) fn as_pid(raw: u32) -> Pid {
    Pid::new(raw).unwrap()
}

/// A transport the tests can set up afresh in a temporary directory.
pub(crate) trait Fresh: Transport + Clone + Send + 'static {
    /// A transport in `tmp` (which need not be there yet): named pipes in
    /// `tmp/pipes`, or session `test` in `tmp/run`.
    fn in_dir(tmp: &Path) -> Self;

    /// The directory it serves in.
    fn served_dir(&self) -> PathBuf;
}

impl Fresh for FifoTransport {
    fn in_dir(tmp: &Path) -> Self {
        FifoTransport::new(tmp.join("pipes"))
    }

    fn served_dir(&self) -> PathBuf {
        self.dir().to_owned()
    }
}

impl Fresh for UnixSocketTransport {
    fn in_dir(tmp: &Path) -> Self {
        UnixSocketTransport::session_in(tmp.join("run"), "test").unwrap()
    }

    fn served_dir(&self) -> PathBuf {
        self.path().parent().unwrap().to_owned()
    }
}

/// What the fake controller heard.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Seen {
    /// A request, or the error its line gave, and who sent it.
    Request(Result<Request, String>, Peer),
    /// A client left.
    Disconnected(Peer),
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The usual answers: the target's pid, its status, `READY`, and
/// `ERROR: <pid>` for `GRANT_ACCESS <pid>` (without `FORCE`) so that every
/// client can tell its reply from others'.
pub(crate) fn standard(request: Result<Request, String>) -> Reply {
    match request {
        Ok(Request::GetTargetPid) => Reply::TargetPid(TARGET),
        Ok(Request::Status) => Reply::Status(Status::new(TARGET)),
        Ok(Request::GrantAccess(grant)) if !grant.force => Reply::Error(grant.client.to_string()),
        Ok(_) => Reply::Ready,
        Err(message) => Reply::Error(message),
    }
}

/// Answers the n-th request with `TARGET_PID n`, whatever it asks.
pub(crate) fn counting() -> impl FnMut(Result<Request, String>) -> Reply + Send + 'static {
    let mut next = 0;
    move |_| {
        next += 1;
        Reply::TargetPid(as_pid(next))
    }
}

/// Sends `line` on `connection` and returns the reply line (within 3 s).
pub(crate) fn ask(connection: &mut impl Connection, line: &[u8]) -> String {
    let reply = connection
        .round_trip(line, std::time::Instant::now() + Duration::from_secs(3))
        .unwrap();
    String::from_utf8(reply).unwrap()
}

/// A request line: `len` bytes `byte`, then a newline.
pub(crate) fn line_of(byte: u8, len: usize) -> Vec<u8> {
    let mut line = vec![byte; len];
    line.push(b'\n');
    line
}

/// How long stopping a server may take.
const STOPPING: Duration = Duration::from_secs(3);

/// A listener served on a thread, answered by a fake controller thread.
pub(crate) struct Server<T: Fresh> {
    pub(crate) transport: T,
    pub(crate) stop: <T::Listener as Listener>::Stopper,
    pub(crate) serve: Option<JoinHandle<io::Result<()>>>,
    log: Log,
    /// The temporary directory, when the server owns it.
    pub(crate) tmp: Option<tempfile::TempDir>,
}

impl<T: Fresh> Server<T> {
    /// Serves a fresh transport in a temporary directory, answering with
    /// [`standard`].
    pub(crate) fn start() -> Server<T> {
        Server::answering(standard)
    }

    /// Serves a fresh transport in a temporary directory, answering with
    /// `answer`.
    pub(crate) fn answering(
        answer: impl FnMut(Result<Request, String>) -> Reply + Send + 'static,
    ) -> Server<T> {
        let tmp = tempfile::tempdir().unwrap();
        let transport = T::in_dir(tmp.path());
        Server::on(Some(tmp), transport, answer)
    }

    /// Serves `transport` (its directory in `tmp`, kept until the server
    /// goes, if given), answering with `answer`.
    pub(crate) fn on(
        tmp: Option<tempfile::TempDir>,
        transport: T,
        mut answer: impl FnMut(Result<Request, String>) -> Reply + Send + 'static,
    ) -> Server<T> {
        Server::on_with_fds(tmp, transport, move |request| (answer(request), Vec::new()))
    }

    /// Serves a fresh transport in a temporary directory, answering with
    /// `answer`'s replies and the file descriptors it sends with each.
    pub(crate) fn answering_with_fds(
        answer: impl FnMut(Result<Request, String>) -> (Reply, Vec<OwnedFd>) + Send + 'static,
    ) -> Server<T> {
        let tmp = tempfile::tempdir().unwrap();
        let transport = T::in_dir(tmp.path());
        Server::on_with_fds(Some(tmp), transport, answer)
    }

    /// As [`on`](Server::on), sending file descriptors with the replies.
    pub(crate) fn on_with_fds(
        tmp: Option<tempfile::TempDir>,
        transport: T,
        mut answer: impl FnMut(Result<Request, String>) -> (Reply, Vec<OwnedFd>) + Send + 'static,
    ) -> Server<T> {
        let mut listener = transport.listen().expect("listen");
        let stop = listener.stopper();
        let (events_tx, events) = crossbeam_channel::bounded(64);
        let serve = thread::spawn(move || listener.serve(&events_tx));
        let log = Log::default();
        let seen = Arc::clone(&log);
        // Ends when `serve` returns and drops the sender.
        thread::spawn(move || {
            for event in events.iter() {
                match event {
                    Event::Request(incoming) => {
                        let request = incoming.request().map_err(|err| err.to_string());
                        seen.lock()
                            .unwrap()
                            .push(Seen::Request(request.clone(), incoming.peer()));
                        let (reply, fds) = answer(request);
                        incoming.reply_with_fds(reply, fds);
                    }
                    Event::Disconnected(peer) => {
                        seen.lock().unwrap().push(Seen::Disconnected(peer));
                    }
                    _ => {}
                }
            }
        });
        Server {
            transport,
            stop,
            serve: Some(serve),
            log,
            tmp,
        }
    }

    /// The directory it serves in.
    pub(crate) fn dir(&self) -> PathBuf {
        self.transport.served_dir()
    }

    /// Everything the fake controller heard, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The requests it was asked, with who asked.
    pub(crate) fn requests(&self) -> Vec<(Result<Request, String>, Peer)> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Request(request, peer) => Some((request, peer)),
                Seen::Disconnected(_) => None,
            })
            .collect()
    }

    /// The requests it was asked.
    pub(crate) fn asked(&self) -> Vec<Result<Request, String>> {
        self.requests()
            .into_iter()
            .map(|(request, _)| request)
            .collect()
    }

    /// The clients it heard leave.
    pub(crate) fn disconnected(&self) -> Vec<Peer> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Disconnected(peer) => Some(peer),
                Seen::Request(..) => None,
            })
            .collect()
    }

    /// Waits until the fake controller has been asked `n` requests.
    pub(crate) fn wait_asked(&self, n: usize) {
        wait_until(
            Duration::from_secs(3),
            &format!("the controller was asked fewer than {n} requests"),
            || self.asked().len() >= n,
        );
    }

    /// A connection, made within 2 s.
    pub(crate) fn connect(&self) -> T::Connection {
        self.transport.connect(Duration::from_secs(2)).unwrap()
    }

    /// heli-core's client of it.
    pub(crate) fn client(&self) -> Client<T> {
        Client::new(self.transport.clone())
    }

    /// Asks for grants to `pids`, a client each (waiting 3 s): the
    /// [`standard`] answers refuse each naming its pid, so each client
    /// must get its own reply, never another's.
    pub(crate) fn each_gets_its_own_reply(&self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            let err = self
                .client()
                .timeout(Duration::from_secs(3))
                .grant_access(as_pid(pid))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
            assert_eq!(err.to_string(), pid.to_string(), "got another's reply");
        }
    }

    /// Opens the served directory to others (`mode`): clients refuse it,
    /// naming the mode, and the controller hears nothing; private again, it
    /// serves. Then shuts down.
    pub(crate) fn refused_when_opened_up(self, mode: u32) {
        fs::set_permissions(self.dir(), fs::Permissions::from_mode(mode)).unwrap();
        let err = self.client().target_pid().unwrap_err();
        assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
        assert!(self.seen().is_empty());
        fs::set_permissions(self.dir(), fs::Permissions::from_mode(0o700)).unwrap();
        self.still_serves();
    }

    /// The controller still answers clients; then it stops, its `serve`
    /// ending without an error.
    pub(crate) fn still_serves(self) {
        assert_eq!(self.client().target_pid().unwrap(), TARGET);
        self.shut_down().unwrap();
    }

    /// Stops `serve` and returns its result; the listener is dropped.
    pub(crate) fn shut_down(mut self) -> io::Result<()> {
        self.stop.stop();
        join_within(self.serve.take().unwrap(), STOPPING)
    }
}

impl<T: Fresh> Drop for Server<T> {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(serve) = self.serve.take() {
            // Never hang here: the watchdog reports a stuck test.
            let deadline = std::time::Instant::now() + STOPPING;
            while !serve.is_finished() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Reads `stream` until the listener closes it (5 s at most); what it said.
pub(crate) fn told(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut data = String::new();
    stream.read_to_string(&mut data).unwrap();
    data
}
