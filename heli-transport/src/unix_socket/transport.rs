//! The transport: a session's address, the runtime directory and the
//! session list, and [`Transport`] on top of the listener and the client.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use heli_core::Transport;

use super::client::UnixSocketConnection;
use super::connections::{Limits, EVICTABLE_AFTER};
use super::listener::UnixSocketListener;
use super::runtime_dir;
use super::session::{self, check_name, SessionEntry};

/// A Unix stream socket, `<runtime dir>/<session name>.sock`, one per
/// controller (a *session*); clients keep their connection open for as long
/// as they like and send any number of requests on it.
///
/// The runtime directory is `$XDG_RUNTIME_DIR/heli/` when `XDG_RUNTIME_DIR`
/// is usable, else `/tmp/heli-<uid>/` (see
/// [`runtime_dir_from`](UnixSocketTransport::runtime_dir_from)).
/// [`sessions`](UnixSocketTransport::sessions) lists the sessions there.
///
/// # Security
///
/// - The socket's directory must be a real directory (not a symbolic link),
///   owned by the user, and closed to group and others (mode 0700): it is
///   opened without following a link and checked with `fstat` before every
///   use, and anything else is refused with an error saying what is wrong.
///   `listen` creates it with mode 0700 when missing. The socket is bound
///   under a temporary name (`.<name>.sock.new`), made mode 0600 and
///   listening, then renamed into place, so a client that finds it finds
///   it listening; the private directory is what keeps others out in
///   between.
/// - The listener reads every connection's peer credentials (`SO_PEERCRED`):
///   a process of another user gets `ERROR: permission denied: ...` and is
///   disconnected, and the attempt is logged. The controller never hears of
///   it.
/// - Every request reaches the controller with the [`Credentials`] the
///   kernel gave for its connection: the user, and the process that
///   connected (pid and start time). That process is held by a pidfd from
///   the moment the connection is accepted (`SO_PEERPIDFD`; before Linux
///   6.5, `pidfd_open` of its pid, checked against its start time): once
///   it has exited, the connection's requests name no process, whatever
///   has its pid by then (a pid may be reused, and a start time counts in
///   clock ticks), and a child it left the connection to cannot ask in
///   its name. The controller decides from them
///   (`GRANT_ACCESS <pid>` only for the connected process itself or one of
///   its descendants; see [`Controller`]); the pid in a request is never
///   trusted on its own.
/// - A client checks that the process serving the socket runs as the same
///   user before it sends anything.
///
/// [`Credentials`]: heli_core::Credentials
/// [`Controller`]: heli_core::Controller
///
/// # Race conditions
///
/// Two controllers starting with one name take turns on a lock file,
/// `<name>.lock`: the second one sees the first and refuses. A socket left
/// by a controller that died (connecting is refused) is removed, with its
/// lock file and under the same lock, by the next controller to `listen` in
/// that directory (whatever its name) or by
/// [`sessions`](UnixSocketTransport::sessions).
///
/// # Deadlines
///
/// Each connection is served on a thread of its own (at most
/// [`max_connections`](UnixSocketTransport::max_connections) at once): the
/// thread that accepted it, which first starts the thread that accepts the
/// next one, so a client's first request never waits for a new thread to
/// be scheduled. A request line begun must be finished within 2 s, and
/// writing a reply may take 2 s, or the connection is closed. A connection
/// may stay idle for a [minute](UnixSocketTransport::idle_timeout), and is
/// then closed (told why in an `ERROR:` line), unless it holds the grant
/// (see [`Listener::watch_grant`](heli_core::Listener::watch_grant)). When
/// a connection closes, the controller gets
/// [`Event::Disconnected`](heli_core::Event::Disconnected) once the
/// connection's last request was answered. Connections turned away
/// (another user, too many) are never announced to the controller.
///
/// # Too many connections
///
/// Idle connections cannot lock clients out: at the limit, the connection
/// idle longest (for a second at least) is closed to make room for the new
/// one, unless it holds the grant; a connection with a request in flight
/// is never closed. What is left: clients of the user that keep every
/// connection busy (a request every second on each) still fill the
/// session, as any process of the user could stop the controller anyway.
///
/// # Examples
///
/// ```
/// use heli_core::{Connection, Listener, Pid, Stopper, Transport};
/// use heli_core::protocol::{Reply, Request};
/// use heli_transport::UnixSocketTransport;
/// use std::time::Duration;
///
/// const TARGET: Pid = Pid::new(42).unwrap();
/// let tmp = tempfile::tempdir()?;
/// let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "demo")?;
/// let mut listener = transport.listen()?;
/// let stop = listener.stopper();
/// let (events_tx, events) = crossbeam_channel::bounded(1);
/// let server = std::thread::spawn(move || listener.serve(&events_tx));
/// // A controller that answers every request with its target's pid.
/// std::thread::spawn(move || {
///     for event in events {
///         if let heli_core::Event::Request(incoming) = event {
///             incoming.reply(Reply::TargetPid(TARGET));
///         }
///     }
/// });
///
/// // One connection, several requests.
/// let mut connection = transport.connect(Duration::from_secs(2))?;
/// for _ in 0..3 {
///     let reply = connection.request(Request::GetTargetPid, Duration::from_secs(2))?;
///     assert_eq!(reply, Reply::TargetPid(TARGET));
/// }
/// let sessions = UnixSocketTransport::sessions_in(&tmp.path().join("run"))?;
/// assert_eq!(sessions[0].name, "demo");
///
/// stop.stop();
/// server.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct UnixSocketTransport {
    name: String,
    path: PathBuf,
    limits: Limits,
}

impl UnixSocketTransport {
    /// How many connections a listener serves at once by default.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

    /// How long a connection may stay idle by default: a minute.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// How long a connection must have been idle before it may be closed
    /// to make room for another (see
    /// [`max_connections`](UnixSocketTransport::max_connections)).
    pub const EVICTABLE_AFTER: Duration = EVICTABLE_AFTER;

    /// The socket of session `name` in the [runtime
    /// directory](UnixSocketTransport::runtime_dir).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `name` is not a session name: 1 to 64 ASCII
    /// letters, digits, `.`, `_` or `-`, not starting with `.`.
    /// `PermissionDenied` when the runtime directory exists but is unsafe
    /// (see [`runtime_dir`](UnixSocketTransport::runtime_dir)).
    pub fn session(name: &str) -> io::Result<Self> {
        Self::session_in(Self::runtime_dir()?, name)
    }

    /// The socket of session `name` in `dir` (`<dir>/<name>.sock`), for tests
    /// and programs that keep their sessions elsewhere; `dir` must be as
    /// private as the runtime directory.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `name` is not a session name (see
    /// [`session`](UnixSocketTransport::session)).
    pub fn session_in(dir: impl Into<PathBuf>, name: &str) -> io::Result<Self> {
        check_name(name)?;
        Ok(UnixSocketTransport {
            name: name.to_owned(),
            path: dir.into().join(format!("{name}.sock")),
            limits: Self::DEFAULT_LIMITS,
        })
    }

    /// The socket at `path`, whatever its name; its lock file is beside it
    /// (`x.sock` -> `x.lock`) and its directory must be private (see
    /// [Security](UnixSocketTransport#security)). The session's
    /// [`name`](UnixSocketTransport::name) is the file name without `.sock`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_name()
            .map(|file| {
                let file = file.to_string_lossy();
                file.strip_suffix(".sock").unwrap_or(&file).to_owned()
            })
            .unwrap_or_default();
        UnixSocketTransport {
            name,
            path,
            limits: Self::DEFAULT_LIMITS,
        }
    }

    const DEFAULT_LIMITS: Limits = Limits {
        max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
    };

    /// How many connections the listener serves at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`](UnixSocketTransport::DEFAULT_MAX_CONNECTIONS)),
    /// at least 1. At the limit, a new connection takes the place of the
    /// one idle longest, if it has been idle for
    /// [`EVICTABLE_AFTER`](UnixSocketTransport::EVICTABLE_AFTER) at least
    /// and does not hold the grant; that one is told why in an `ERROR:`
    /// line, and closed. When none may go, the new connection gets an
    /// `ERROR:` line and is closed.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max.max(1);
        self
    }

    /// How long a connection may stay idle (nothing unanswered, no line
    /// begun) before the listener closes it, after telling it why in an
    /// `ERROR:` line (default
    /// [`DEFAULT_IDLE_TIMEOUT`](UnixSocketTransport::DEFAULT_IDLE_TIMEOUT)).
    /// The connection that holds the grant is never closed: the grant
    /// would go with it.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of heli's sockets for the effective user:
    /// [`runtime_dir_from`](UnixSocketTransport::runtime_dir_from) with this
    /// process's `XDG_RUNTIME_DIR` and effective uid. It need not exist yet
    /// (`listen` creates it).
    ///
    /// # Errors
    ///
    /// `PermissionDenied`, saying what is wrong, when the directory exists
    /// but is a symbolic link, not a directory, another user's, or open to
    /// group or others.
    pub fn runtime_dir() -> io::Result<PathBuf> {
        runtime_dir::current()
    }

    /// The runtime directory for user `uid` given the value of
    /// `XDG_RUNTIME_DIR`: `<XDG_RUNTIME_DIR>/heli` when that is an absolute
    /// path to an existing directory (not a symbolic link) owned by `uid`,
    /// else `/tmp/heli-<uid>` (the convention of tmux).
    pub fn runtime_dir_from(xdg_runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
        runtime_dir::choose(xdg_runtime_dir, uid)
    }

    /// The sessions in the [runtime directory](UnixSocketTransport::runtime_dir):
    /// see [`sessions_in`](UnixSocketTransport::sessions_in).
    ///
    /// # Errors
    ///
    /// As [`sessions_in`](UnixSocketTransport::sessions_in).
    pub fn sessions() -> io::Result<Vec<SessionEntry>> {
        Self::sessions_in(&Self::runtime_dir()?)
    }

    /// Every `*.sock` entry of `dir`, sorted by name: [`SessionState::Live`]
    /// when a controller accepts connections there, [`SessionState::Dead`]
    /// when connecting is refused (its controller died), or
    /// [`SessionState::Foreign`] when it is not a socket, belongs to another
    /// user, or is not a session name. No request is sent: ask a live one
    /// for its `STATUS` yourself.
    ///
    /// Dead sockets are removed, with their lock file, unless a controller
    /// holds the session's lock (it is replacing them); `listen` removes
    /// them the same way before it binds. Foreign entries are left alone,
    /// and sockets of other users are never connected to. A missing `dir`
    /// holds no sessions.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` when `dir` is not private (as for
    /// [`runtime_dir`](UnixSocketTransport::runtime_dir)), or the error of
    /// reading it.
    ///
    /// [`SessionState::Live`]: crate::SessionState::Live
    /// [`SessionState::Dead`]: crate::SessionState::Dead
    /// [`SessionState::Foreign`]: crate::SessionState::Foreign
    pub fn sessions_in(dir: &Path) -> io::Result<Vec<SessionEntry>> {
        session::list(dir)
    }
}

impl SessionEntry {
    /// The transport to reach this session.
    pub fn transport(&self) -> UnixSocketTransport {
        UnixSocketTransport::at(&self.path)
    }
}

impl Transport for UnixSocketTransport {
    type Listener = UnixSocketListener;
    type Connection = UnixSocketConnection;

    fn listen(&self) -> io::Result<UnixSocketListener> {
        UnixSocketListener::bind(&self.name, &self.path, self.limits)
    }

    fn connect(&self, timeout: Duration) -> io::Result<UnixSocketConnection> {
        UnixSocketConnection::connect(&self.name, &self.path, timeout)
    }

    fn describe(&self) -> String {
        format!("{} (session {})", self.path.display(), self.name)
    }

    /// Every request comes with the kernel's credentials of its connection.
    fn authenticates(&self) -> bool {
        true
    }

    /// A reply's file descriptors go with its line (`SCM_RIGHTS`); a
    /// [`UnixSocketConnection`] receives them with
    /// [`round_trip_with_fds`](heli_core::Connection::round_trip_with_fds).
    fn passes_fds(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        let transport = UnixSocketTransport::at("/x/y/demo.sock");
        assert_eq!(transport.name(), "demo");
        assert_eq!(transport.path(), Path::new("/x/y/demo.sock"));
        assert_eq!(UnixSocketTransport::at("control").name(), "control");
    }
}
