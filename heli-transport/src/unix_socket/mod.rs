//! One Unix stream socket per session, in a private runtime directory, with
//! authenticated peers.

mod client;
mod listener;
mod peer;
mod runtime_dir;
mod serve;
mod session;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use heli_core::protocol::LineBuffer;
use heli_core::Transport;
use log::{debug, info};
use nix::errno::Errno;
use nix::fcntl::{openat, Flock, OFlag};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
use nix::sys::socket::{Backlog, UnixAddr};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, Uid, UnlinkatFlags};

pub use client::UnixSocketConnection;
pub use listener::UnixSocketListener;
pub use session::{SessionEntry, SessionState};

use crate::io::{annotate, refuse};
use crate::stop::StopSignal;
use peer::{connect_socket, credentials, server_pid, PROBE_TIMEOUT};
use runtime_dir::{check_socket, make_private_dir, open_private_dir, stat_at};
use session::{check_name, inspect, lock_name, lock_session};

/// How long `listen` waits for a session's lock, held briefly by clients
/// that clean up stale sockets.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Pending connections the kernel queues for the accept loop.
const BACKLOG: i32 = 1024;

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
///   `listen` creates it with mode 0700 when missing. The socket is made
///   mode 0600 right after `bind`, before `listen`; the private directory
///   is what keeps others out in between.
/// - The listener reads every connection's peer credentials (`SO_PEERCRED`):
///   a process of another user gets `ERROR: permission denied: ...` and is
///   disconnected, and the attempt is logged. The controller never hears of
///   it.
/// - `GRANT_ACCESS <pid>` (with or without `FORCE`) reaches the controller
///   only when `<pid>` is the connected process itself or one of its
///   descendants, as `/proc` shows them (see below); anything else is
///   answered `ERROR: GRANT_ACCESS <pid> refused: ...` by the listener. The
///   pid in a request is never trusted on its own.
/// - A client checks that the process serving the socket runs as the same
///   user before it sends anything.
///
/// # Race conditions
///
/// The descendant check walks parent links in `/proc/<pid>/stat` and
/// compares start times: each parent must have started no later than its
/// child (a reused pid is younger than its "child"), the connected process
/// must still be the one that connected (its start time is read when the
/// connection is accepted), and the candidate must show the same start time
/// and parent after the walk as before it.
///
/// Two controllers starting with one name take turns on a lock file,
/// `<name>.lock`: the second one sees the first and refuses. A socket left
/// by a controller that died (connecting is refused) is replaced by the
/// next controller of that name, or removed by
/// [`sessions`](UnixSocketTransport::sessions) under the same lock.
///
/// # Deadlines
///
/// Each connection is served on a thread of its own (at most
/// [`max_connections`](UnixSocketTransport::max_connections) at once; more
/// are refused with an `ERROR:` line): the thread that accepted it, which
/// first starts the thread that accepts the next one, so a client's first
/// request never waits for a new thread to be scheduled. An idle connection
/// may stay open; a request line begun must be finished within 2 s, and
/// writing a reply may take 2 s, or the connection is closed. When a
/// connection closes, the controller gets [`Event::Disconnected`] once the
/// connection's last request was answered. Connections turned away (another
/// user, too many) are never announced to the controller.
///
/// # Examples
///
/// ```
/// use heli_core::{Connection, Listener, Stopper, Transport};
/// use heli_core::protocol::{Reply, Request};
/// use heli_transport::UnixSocketTransport;
/// use std::time::Duration;
///
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
///             incoming.reply(Reply::TargetPid(42));
///         }
///     }
/// });
///
/// // One connection, several requests.
/// let mut connection = transport.connect(Duration::from_secs(2))?;
/// for _ in 0..3 {
///     let reply = connection.request(Request::GetTargetPid, Duration::from_secs(2))?;
///     assert_eq!(reply, Reply::TargetPid(42));
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
    max_connections: usize,
}

impl UnixSocketTransport {
    /// How many connections a listener serves at once by default.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

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
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
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
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// How many connections the listener serves at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`](UnixSocketTransport::DEFAULT_MAX_CONNECTIONS));
    /// further ones get an `ERROR:` line and are closed. At least 1.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
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
        let dir = Self::runtime_dir_from(
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
            Uid::effective().as_raw(),
        );
        match open_private_dir(&dir) {
            Ok(_) => Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(dir),
            Err(err) => Err(err),
        }
    }

    /// The runtime directory for user `uid` given the value of
    /// `XDG_RUNTIME_DIR`: `<XDG_RUNTIME_DIR>/heli` when that is an absolute
    /// path to an existing directory (not a symbolic link) owned by `uid`,
    /// else `/tmp/heli-<uid>` (the convention of tmux).
    pub fn runtime_dir_from(xdg_runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
        if let Some(xdg) = xdg_runtime_dir {
            // Without a trailing slash, which would make lstat follow a link.
            let xdg: PathBuf = Path::new(xdg).components().collect();
            let usable = xdg.is_absolute()
                && std::fs::symlink_metadata(&xdg)
                    .is_ok_and(|meta| meta.is_dir() && meta.uid() == uid);
            if usable {
                return xdg.join("heli");
            }
            debug!(
                "XDG_RUNTIME_DIR={} is not an absolute path to a directory of uid {uid}: not using it",
                xdg.display()
            );
        }
        PathBuf::from(format!("/tmp/heli-{uid}"))
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
    /// holds the session's lock (it is replacing them). Foreign entries are
    /// left alone, and sockets of other users are never connected to. A
    /// missing `dir` holds no sessions.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` when `dir` is not private (as for
    /// [`runtime_dir`](UnixSocketTransport::runtime_dir)), or the error of
    /// reading it.
    pub fn sessions_in(dir: &Path) -> io::Result<Vec<SessionEntry>> {
        let dir_fd = match open_private_dir(dir) {
            Ok(fd) => fd,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut files = Vec::new();
        let mut listing = nix::dir::Dir::from_fd(dir_fd.try_clone()?)?;
        for entry in listing.iter() {
            let entry = entry?;
            let file = entry.file_name().to_bytes();
            if file.len() > ".sock".len() && file.ends_with(b".sock") {
                files.push(OsStr::from_bytes(file).to_owned());
            }
        }
        files.sort();
        Ok(files
            .iter()
            .filter_map(|file| inspect(&dir_fd, dir, file))
            .collect())
    }

    /// The socket's directory.
    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    }

    /// The socket's and the lock's file names.
    fn file_names(&self) -> io::Result<(&OsStr, OsString)> {
        let Some(file) = self.path.file_name() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a socket file", self.path.display()),
            ));
        };
        Ok((file, lock_name(file)))
    }

    fn not_found(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no session {} at {}", self.name, self.path.display()),
        )
    }

    fn served_by(&self, pid: Option<u32>) -> io::Error {
        let who = pid.map_or_else(|| "PID unknown".to_owned(), |pid| format!("PID {pid}"));
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "a controller already serves session {} ({who}); stop it or choose another name",
                self.name
            ),
        )
    }

    /// With the session's lock held: records our pid in the lock file,
    /// removes a stale socket, binds and listens. Returns the listening
    /// socket and its file's device and inode; on error, nothing is left
    /// but the lock file.
    fn bind_locked(
        &self,
        dir: &OwnedFd,
        file: &OsStr,
        locked: &mut Option<Flock<File>>,
    ) -> io::Result<(UnixListener, (nix::libc::dev_t, nix::libc::ino_t))> {
        if let Some(locked) = locked.as_mut() {
            locked.set_len(0)?;
            locked.rewind()?;
            writeln!(locked, "{}", std::process::id())?;
        }
        match stat_at(dir, file) {
            Err(Errno::ENOENT) => {}
            Err(err) => return Err(annotate(err.into(), &self.path)),
            Ok(stat) => {
                check_socket(&stat, &self.path)?;
                match connect_socket(&self.path, Instant::now() + PROBE_TIMEOUT) {
                    // A controller that does not use the lock file.
                    Ok(stream) => return Err(self.served_by(server_pid(&stream))),
                    Err(err) if err.raw_os_error() == Some(Errno::ECONNREFUSED as i32) => {
                        match unlinkat(dir, file, UnlinkatFlags::NoRemoveDir) {
                            Ok(()) | Err(Errno::ENOENT) => {}
                            Err(err) => return Err(annotate(err.into(), &self.path)),
                        }
                        info!(
                            "replaced the stale socket of session {} (its controller died)",
                            self.name
                        );
                    }
                    Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                        return Err(self.served_by(None))
                    }
                    Err(err) => return Err(annotate(err, &self.path)),
                }
            }
        }

        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let addr = UnixAddr::new(&self.path).map_err(|err| annotate(err.into(), &self.path))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|err| annotate(err.into(), &self.path))?;
        // Nobody can connect before `listen`, and the private directory
        // keeps others out until the mode is set.
        let listening = stat_at(dir, file)
            .map_err(io::Error::from)
            .and_then(|bound| {
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
                socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
                Ok((bound.st_dev, bound.st_ino))
            });
        match listening {
            Ok(socket_id) => Ok((UnixListener::from(fd), socket_id)),
            Err(err) => {
                let _ = unlinkat(dir, file, UnlinkatFlags::NoRemoveDir);
                Err(annotate(err, &self.path))
            }
        }
    }

    /// Why `listen` cannot take the session's lock.
    fn in_use(&self, dir: &OwnedFd, lock: &OsStr) -> io::Error {
        if let Ok(stream) = connect_socket(&self.path, Instant::now() + PROBE_TIMEOUT) {
            return self.served_by(server_pid(&stream));
        }
        let holder = openat(
            dir,
            lock,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| {
            let mut text = String::new();
            File::from(fd).read_to_string(&mut text).ok()?;
            text.trim().parse::<u32>().ok()
        });
        let who = holder.map_or_else(|| "another process".to_owned(), |pid| format!("PID {pid}"));
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "session {} is locked by {who} (a controller starting or stopping?); try again or choose another name",
                self.name
            ),
        )
    }
}

impl Transport for UnixSocketTransport {
    type Listener = UnixSocketListener;
    type Connection = UnixSocketConnection;

    fn listen(&self) -> io::Result<UnixSocketListener> {
        let (file, lock) = self.file_names()?;
        let dir_path = self.dir();
        let dir = make_private_dir(dir_path)?;

        // One controller per session name. A live one is named at once; a
        // client cleaning up stale sockets holds the lock for an instant.
        let locked = match lock_session(&dir, dir_path, &lock, Duration::ZERO)? {
            Some(locked) => locked,
            None => {
                if let Ok(stream) = connect_socket(&self.path, Instant::now() + PROBE_TIMEOUT) {
                    return Err(self.served_by(server_pid(&stream)));
                }
                match lock_session(&dir, dir_path, &lock, LOCK_WAIT)? {
                    Some(locked) => locked,
                    None => return Err(self.in_use(&dir, &lock)),
                }
            }
        };
        let mut locked = Some(locked);
        match self.bind_locked(&dir, file, &mut locked) {
            Ok((socket, socket_id)) => Ok(UnixSocketListener {
                name: self.name.clone(),
                path: self.path.clone(),
                file: file.to_owned(),
                lock,
                socket_id,
                socket,
                max_connections: self.max_connections,
                stop: StopSignal::new()?,
                dir,
                _locked: locked.take().expect("the lock is held"),
            }),
            Err(err) => {
                // Removed while still locked, so nobody locks a removed file.
                let _ = unlinkat(&dir, lock.as_os_str(), UnlinkatFlags::NoRemoveDir);
                drop(locked);
                Err(err)
            }
        }
    }

    fn connect(&self, timeout: Duration) -> io::Result<UnixSocketConnection> {
        let deadline = Instant::now() + timeout;
        let (file, _) = self.file_names()?;
        let dir = open_private_dir(self.dir()).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => self.not_found(),
            _ => err,
        })?;
        match stat_at(&dir, file) {
            Ok(stat) => check_socket(&stat, &self.path)?,
            Err(Errno::ENOENT) => return Err(self.not_found()),
            Err(err) => return Err(annotate(err.into(), &self.path)),
        }
        let stream = connect_socket(&self.path, deadline).map_err(|err| {
            match err.raw_os_error().map(Errno::from_raw) {
                Some(Errno::ENOENT) => self.not_found(),
                Some(Errno::ECONNREFUSED) => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "session {} is gone (stale socket {})",
                        self.name,
                        self.path.display()
                    ),
                ),
                _ => err,
            }
        })?;
        let server = credentials(&stream)?;
        let me = Uid::effective().as_raw();
        if server.uid() != me {
            return Err(refuse(
                &self.path,
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

    fn describe(&self) -> String {
        format!("{} (session {})", self.path.display(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names() {
        for good in ["a", "target-123", "my.app_2", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.to_string().contains("session name"), "{err}");
        }
    }

    #[test]
    fn lock_names() {
        assert_eq!(lock_name(OsStr::new("a.sock")), "a.lock");
        assert_eq!(lock_name(OsStr::new("control")), "control.lock");
        let transport = UnixSocketTransport::at("/x/y/demo.sock");
        assert_eq!(transport.name(), "demo");
        assert_eq!(transport.dir(), Path::new("/x/y"));
        assert_eq!(UnixSocketTransport::at("rel.sock").dir(), Path::new("."));
        assert!(UnixSocketTransport::at("/").file_names().is_err());
    }
}
