//! One Unix stream socket per session, in a private runtime directory, with
//! authenticated peers.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use heli_core::protocol::{parse_request, Dialect, LineBuffer, Reply};
use heli_core::{Connection, Event, Incoming, Listener, Peer, Stopper, Transport};
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, Flock, FlockArg, OFlag};
use nix::poll::PollFlags;
use nix::sys::socket::{self, sockopt::PeerCredentials, AddressFamily, SockFlag, SockType};
use nix::sys::socket::{Backlog, UnixAddr, UnixCredentials};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, Uid, UnlinkatFlags};

use crate::io::{annotate, read_line, refuse, send_all, wait_any};
use crate::proc;
use crate::stop::{StopHandle, StopSignal};

/// How long a client may take to finish a request line it has begun.
const PARTIAL_LINE_DEADLINE: Duration = Duration::from_secs(2);
/// How long writing a reply to a client may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a stopping listener still waits for the controller's reply to
/// a request it had passed on.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How long `listen` waits for a session's lock, held briefly by clients
/// that clean up stale sockets.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// How long probing a socket (is a controller behind it?) may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pending connections the kernel queues for the accept loop.
const BACKLOG: i32 = 1024;
/// A connection thread's stack: it reads lines and waits on channels.
const CONNECTION_STACK: usize = 256 * 1024;
/// The longest session name.
const MAX_NAME: usize = 64;

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

/// One `*.sock` entry of a runtime directory, as
/// [`UnixSocketTransport::sessions_in`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionEntry {
    /// The file name without `.sock`.
    pub name: String,
    /// The socket's path.
    pub path: PathBuf,
    /// What is behind it.
    pub state: SessionState,
    /// The controller's process id, for a live session (from its
    /// credentials; `None` when it could not be read).
    pub pid: Option<u32>,
}

impl SessionEntry {
    /// The transport to reach this session.
    pub fn transport(&self) -> UnixSocketTransport {
        UnixSocketTransport::at(&self.path)
    }
}

/// What [`UnixSocketTransport::sessions_in`] found behind a socket file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// A controller accepts connections.
    Live,
    /// Nobody listens (its controller died); the socket was removed unless
    /// a controller was just taking the session over.
    Dead,
    /// Not a session of this user (the reason says why); left alone.
    Foreign(String),
}

/// Inspects the entry `file` of `dir`; `None` when it vanished meanwhile.
fn inspect(dir_fd: &OwnedFd, dir: &Path, file: &OsStr) -> Option<SessionEntry> {
    let bytes = file.as_bytes();
    let name = String::from_utf8_lossy(&bytes[..bytes.len() - ".sock".len()]).into_owned();
    let path = dir.join(file);
    let entry = |state: SessionState, pid: Option<u32>| {
        Some(SessionEntry {
            name: name.clone(),
            path: path.clone(),
            state,
            pid,
        })
    };
    let foreign = |why: String| entry(SessionState::Foreign(why), None);
    let stat = match stat_at(dir_fd, file) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return None,
        Err(err) => return foreign(format!("cannot inspect it: {err}")),
    };
    match file_type(&stat) {
        SFlag::S_IFSOCK => {}
        SFlag::S_IFLNK => return foreign("a symbolic link".to_owned()),
        _ => return foreign("not a socket".to_owned()),
    }
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        return foreign(format!("owned by uid {}", stat.st_uid));
    }
    if check_name(&name).is_err() {
        return foreign("not a session name".to_owned());
    }
    match connect_socket(&path, Instant::now() + PROBE_TIMEOUT) {
        Ok(stream) => match credentials(&stream) {
            Ok(server) if server.uid() != me => foreign(format!("served by uid {}", server.uid())),
            _ => entry(SessionState::Live, server_pid(&stream)),
        },
        Err(err) if err.raw_os_error() == Some(Errno::ECONNREFUSED as i32) => {
            remove_dead(dir_fd, dir, file, &stat);
            entry(SessionState::Dead, None)
        }
        // Its backlog is full: somebody listens.
        Err(err) if err.kind() == io::ErrorKind::TimedOut => entry(SessionState::Live, None),
        Err(err) => foreign(format!("cannot connect: {err}")),
    }
}

/// Removes the dead socket `file` (last seen as `seen`) and its lock file,
/// under the session's lock; leaves them to a controller holding the lock.
fn remove_dead(dir_fd: &OwnedFd, dir: &Path, file: &OsStr, seen: &FileStat) {
    let lock = lock_name(file);
    let path = dir.join(file);
    let _locked = match lock_session(dir_fd, dir, &lock, Duration::ZERO) {
        Ok(Some(locked)) => locked,
        Ok(None) => {
            debug!(
                "not removing {}: a controller holds its lock",
                path.display()
            );
            return;
        }
        Err(err) => {
            debug!("not removing {}: {err}", path.display());
            return;
        }
    };
    // Still the same socket, and still nobody behind it?
    let same = stat_at(dir_fd, file)
        .is_ok_and(|now| (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino));
    let refused = connect_socket(&path, Instant::now() + PROBE_TIMEOUT)
        .is_err_and(|err| err.raw_os_error() == Some(Errno::ECONNREFUSED as i32));
    if !(same && refused) {
        return;
    }
    match unlinkat(dir_fd, file, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => info!(
            "removed the stale socket {} (its controller died)",
            path.display()
        ),
        Err(err) => warn!("cannot remove the stale socket {}: {err}", path.display()),
    }
    let _ = unlinkat(dir_fd, lock.as_os_str(), UnlinkatFlags::NoRemoveDir);
}

/// `x.sock` -> `x.lock`; another name gets `.lock` appended.
fn lock_name(file: &OsStr) -> OsString {
    let bytes = file.as_bytes();
    let stem = bytes.strip_suffix(b".sock").unwrap_or(bytes);
    let mut lock = OsStr::from_bytes(stem).to_owned();
    lock.push(".lock");
    lock
}

fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid session name {name:?}: use 1 to {MAX_NAME} ASCII letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        ))
    }
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

fn stat_at(dir: &OwnedFd, file: &OsStr) -> nix::Result<FileStat> {
    fstatat(dir, file, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Opens the directory `path` without following a link and checks that it
/// is the user's and closed to everyone else.
fn open_private_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|err| match err {
        Errno::ELOOP | Errno::ENOTDIR => match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => refuse(path, "is a symbolic link"),
            _ => refuse(path, "is not a directory"),
        },
        Errno::ENOENT => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ),
        err => annotate(err.into(), path),
    })?;
    let stat = fstat(&dir)?;
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        return Err(refuse(
            path,
            &format!("is owned by uid {}, not by you (uid {me})", stat.st_uid),
        ));
    }
    if stat.st_mode & 0o077 != 0 {
        return Err(refuse(
            path,
            &format!(
                "is open to group or others (mode {:04o}); it must be 0700",
                stat.st_mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// Creates the directory `path` (mode 0700) when missing, then opens and
/// checks it as [`open_private_dir`] does.
fn make_private_dir(path: &Path) -> io::Result<OwnedFd> {
    let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
        Err(err) => return Err(annotate(err, path)),
    };
    let dir = open_private_dir(path)?;
    if created {
        // The umask may have taken the owner's bits too.
        fchmod(&dir, Mode::from_bits_truncate(0o700))?;
    }
    Ok(dir)
}

/// Refuses a file at `path` that is not a socket of the user.
fn check_socket(stat: &FileStat, path: &Path) -> io::Result<()> {
    match file_type(stat) {
        SFlag::S_IFSOCK => {}
        SFlag::S_IFLNK => return Err(refuse(path, "is a symbolic link")),
        _ => return Err(refuse(path, "is not a socket")),
    }
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        return Err(refuse(
            path,
            &format!("is owned by uid {}, not by you (uid {me})", stat.st_uid),
        ));
    }
    Ok(())
}

/// Takes the exclusive lock of the session's lock file `lock` in `dir`,
/// creating it (mode 0600) if need be, trying for `wait` at most; `None`
/// when another process holds it.
///
/// A lock file is removed by whoever holds its lock: after locking, the
/// file must still be the one at that name, else we locked a removed file
/// and try again.
fn lock_session(
    dir: &OwnedFd,
    dir_path: &Path,
    lock: &OsStr,
    wait: Duration,
) -> io::Result<Option<Flock<File>>> {
    let path = dir_path.join(lock);
    let deadline = Instant::now() + wait;
    let mut backoff = Duration::from_micros(50);
    loop {
        let fd = openat(
            dir,
            lock,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|err| match err {
            Errno::ELOOP => refuse(&path, "is a symbolic link"),
            err => annotate(err.into(), &path),
        })?;
        let mine = fstat(&fd)?;
        if file_type(&mine) != SFlag::S_IFREG {
            return Err(refuse(&path, "is not a regular file"));
        }
        if mine.st_uid != Uid::effective().as_raw() {
            return Err(refuse(
                &path,
                &format!("is owned by uid {}, not by you", mine.st_uid),
            ));
        }
        match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
            Ok(locked) => {
                let current = stat_at(dir, lock);
                if current.is_ok_and(|now| (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)) {
                    return Ok(Some(locked));
                }
                // Removed (or replaced) before we got the lock: again.
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
            Err((_, err)) => return Err(annotate(err.into(), &path)),
        }
    }
}

/// Connects to the socket at `path` without blocking past `deadline`.
///
/// Errors keep their `errno` (`ENOENT`, `ECONNREFUSED`, ...); `TimedOut`
/// when the listener's backlog stayed full until the deadline.
fn connect_socket(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(|err| annotate(err.into(), path))?;
    let mut backoff = Duration::from_micros(20);
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
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

fn credentials(stream: &UnixStream) -> io::Result<UnixCredentials> {
    Ok(socket::getsockopt(stream, PeerCredentials)?)
}

/// The process at the other end, as the kernel saw it connect or listen.
fn server_pid(stream: &UnixStream) -> Option<u32> {
    credentials(stream)
        .ok()
        .and_then(|cred| u32::try_from(cred.pid()).ok())
        .filter(|&pid| pid > 0)
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

/// The controller's end of a [`UnixSocketTransport`]; dropping it removes
/// the socket and the lock file it made (the directory stays: other
/// sessions may use it).
#[derive(Debug)]
pub struct UnixSocketListener {
    name: String,
    path: PathBuf,
    dir: OwnedFd,
    file: OsString,
    lock: OsString,
    /// The bound socket's device and inode: only that file is removed.
    socket_id: (nix::libc::dev_t, nix::libc::ino_t),
    socket: UnixListener,
    max_connections: usize,
    stop: StopSignal,
    /// Held until the files are removed (fields drop after `drop`).
    _locked: Flock<File>,
}

impl UnixSocketListener {
    /// The session's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection and admits it; `None` once stopped.
    /// Connections turned away are closed here.
    fn accept_one<'env>(&'env self, serving: &Serving<'env>) -> io::Result<Option<Served<'env>>> {
        let mut starved = false;
        loop {
            let seen = wait_any(
                &[
                    (self.socket.as_fd(), PollFlags::POLLIN),
                    (self.stop.as_fd(), PollFlags::POLLIN),
                ],
                None,
            )?;
            if !seen[1].is_empty() {
                return Ok(None);
            }
            loop {
                let stream = match self.socket.accept() {
                    Ok((stream, _)) => stream,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) =>
                    {
                        continue
                    }
                    Err(err)
                        if matches!(
                            err.raw_os_error().map(Errno::from_raw),
                            Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
                        ) =>
                    {
                        if !starved {
                            warn!(
                                "cannot accept connections on {}: {err}; retrying",
                                self.path.display()
                            );
                            starved = true;
                        }
                        thread::sleep(Duration::from_millis(50));
                        break;
                    }
                    Err(err) => return Err(annotate(err, &self.path)),
                };
                starved = false;
                let id = serving.next_id.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(served) = self.admit(stream, id, serving) {
                    return Ok(Some(served));
                }
            }
        }
    }

    /// Authenticates a new connection: what serving it takes, counted as
    /// active, or `None` when it was turned away.
    fn admit<'env>(
        &'env self,
        stream: UnixStream,
        id: u64,
        serving: &Serving<'env>,
    ) -> Option<Served<'env>> {
        let cred = match stream
            .set_nonblocking(true)
            .and_then(|()| credentials(&stream))
        {
            Ok(cred) => cred,
            Err(err) => {
                warn!("closing a connection to session {}: {err}", self.name);
                return None;
            }
        };
        let me = Uid::effective().as_raw();
        let (pid, uid) = (cred.pid(), cred.uid());
        if uid != me {
            warn!(
                "refused a connection to session {} from PID {pid} of uid {uid}: only uid {me} may use it",
                self.name
            );
            refuse_connection(
                &stream,
                &format!(
                    "permission denied: session {} belongs to uid {me}, not to uid {uid}",
                    self.name
                ),
            );
            return None;
        }
        if serving.active.load(Ordering::SeqCst) >= self.max_connections {
            warn!(
                "refused a connection to session {} from PID {pid}: {} connections are open",
                self.name, self.max_connections
            );
            refuse_connection(
                &stream,
                &format!(
                    "too many connections to session {} ({}); try again later",
                    self.name, self.max_connections
                ),
            );
            return None;
        }
        let pid = u32::try_from(pid).ok().filter(|&pid| pid > 0);
        let peer = Peer {
            connection: id,
            pid,
            uid: Some(uid),
        };
        // Who connected: a pid alone may be reused later.
        let peer_start = pid
            .and_then(|pid| proc::stat(pid).ok().flatten())
            .map(|stat| stat.start);
        serving.active.fetch_add(1, Ordering::SeqCst);
        Some(Served {
            listener: self,
            stream,
            peer,
            peer_start,
            events: serving.events,
            stopping: serving.stopping.clone(),
        })
    }
}

/// What the threads serving a [`UnixSocketListener`] share.
struct Serving<'env> {
    listener: &'env UnixSocketListener,
    events: &'env Sender<Event>,
    /// Disconnected once accepting has ended: connection threads then never
    /// wait on a controller that may no longer listen.
    stopping: Receiver<()>,
    /// Its sender, dropped by the thread that ends accepting.
    accepting: Mutex<Option<Sender<()>>>,
    /// Connections being served.
    active: AtomicUsize,
    /// The last connection id given.
    next_id: AtomicU64,
    /// Why accepting ended, if it failed.
    failure: Mutex<Option<io::Error>>,
}

impl<'env> Serving<'env> {
    /// Accepts the next connection, starts a thread of `scope` that accepts
    /// the one after, then serves the connection on this thread until it
    /// closes. Returns at once when accepting ends (stopped, or failed).
    ///
    /// The connection is served by the thread that accepted it, which is
    /// already running: its first request does not wait for a new thread
    /// to be scheduled (at start-up, beside a target busy starting, that
    /// wait can be a scheduler tick).
    fn lead<'scope>(&'env self, scope: &'scope thread::Scope<'scope, 'env>) {
        loop {
            // A bug that panics here must not leave the session deaf: it
            // ends accepting as a failure would, and the controller hears.
            let accepted = panic::catch_unwind(AssertUnwindSafe(|| self.listener.accept_one(self)))
                .unwrap_or_else(|_| Err(io::Error::other("accepting a connection panicked")));
            let served = match accepted {
                Ok(Some(served)) => served,
                Ok(None) => return self.end_accepting(None),
                Err(err) => return self.end_accepting(Some(err)),
            };
            let next = thread::Builder::new()
                .name("heli-conn".into())
                .stack_size(CONNECTION_STACK)
                .spawn_scoped(scope, move || self.lead(scope));
            match next {
                Ok(_) => {
                    // A panic ends this connection only, and frees its slot.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| served.run()));
                    self.active.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                // The connection is closed; this thread goes on accepting.
                Err(err) => {
                    warn!("cannot serve a connection of {:?}: {err}", served.peer);
                    drop(served);
                    self.active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Lets the connection threads know that nobody accepts any more; on a
    /// failure, closes the connections too and keeps the error for `serve`.
    fn end_accepting(&self, failure: Option<io::Error>) {
        if let Some(err) = failure {
            let name = &self.listener.name;
            warn!("session {name} stops accepting connections: {err}");
            self.listener.stop.handle().stop();
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(err);
        }
        drop(
            self.accepting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// Tells a client why it is turned away, and closes its connection.
fn refuse_connection(stream: &UnixStream, message: &str) {
    // Whatever it sent already: closing with unread data would make its
    // end see a reset instead of our line. Bounded: a peer writing without
    // end must not hold up the accept loop.
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match nix::unistd::read(stream, &mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let line = Reply::Error(message.to_owned()).encode(Dialect::Upper);
    let _ = send_all(
        stream,
        line.as_bytes(),
        Instant::now() + Duration::from_millis(100),
        None,
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Listener for UnixSocketListener {
    type Stopper = StopHandle;

    fn stopper(&self) -> StopHandle {
        self.stop.handle()
    }

    fn serve(&mut self, events: &Sender<Event>) -> io::Result<()> {
        let (accepting, stopping) = crossbeam_channel::bounded::<()>(0);
        let serving = Serving {
            listener: &*self,
            events,
            stopping,
            accepting: Mutex::new(Some(accepting)),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            failure: Mutex::new(None),
        };
        // This thread accepts the first connection; every thread started for
        // the others is joined at the end of the scope.
        thread::scope(|scope| serving.lead(scope));
        match serving
            .failure
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        match stat_at(&self.dir, &self.file) {
            Ok(stat) if (stat.st_dev, stat.st_ino) == self.socket_id => {
                if let Err(err) =
                    unlinkat(&self.dir, self.file.as_os_str(), UnlinkatFlags::NoRemoveDir)
                {
                    warn!("cannot remove {}: {err}", self.path.display());
                }
            }
            Ok(_) => warn!(
                "{} was replaced by another file: leaving it",
                self.path.display()
            ),
            Err(Errno::ENOENT) => {}
            Err(err) => warn!("cannot remove {}: {err}", self.path.display()),
        }
        // We hold its lock: nobody else removes or replaces it.
        match unlinkat(&self.dir, self.lock.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(err) => warn!(
                "cannot remove the lock file of session {}: {err}",
                self.name
            ),
        }
    }
}

/// One accepted, authenticated connection and what serving it needs.
struct Served<'a> {
    listener: &'a UnixSocketListener,
    stream: UnixStream,
    peer: Peer,
    /// When the peer process started, if it could be read.
    peer_start: Option<u64>,
    events: &'a Sender<Event>,
    stopping: Receiver<()>,
}

/// What became of a request passed on to the controller.
enum Answer {
    Reply(String),
    /// Close the connection (the listener is stopping).
    Close,
    /// The controller is gone: stop the listener.
    Gone,
}

impl Served<'_> {
    fn run(self) {
        debug!(
            "client {:?} connected to session {}",
            self.peer, self.listener.name
        );
        self.serve_lines();
        let Served {
            stream,
            peer,
            events,
            stopping,
            ..
        } = self;
        drop(stream);
        debug!("client {peer:?} disconnected");
        select! {
            send(events, Event::Disconnected(peer)) -> _ => {}
            recv(stopping) -> _ => {}
        }
    }

    /// Reads request lines and answers them until the client leaves, breaks
    /// a deadline, or the listener stops.
    fn serve_lines(&self) {
        let stop = self.listener.stop.as_fd();
        let mut lines = LineBuffer::new();
        // When the unfinished line began.
        let mut partial_since: Option<Instant> = None;
        let mut buf = [0u8; 4096];
        loop {
            let deadline = partial_since.map(|since| since + PARTIAL_LINE_DEADLINE);
            let seen = match wait_any(
                &[
                    (self.stream.as_fd(), PollFlags::POLLIN),
                    (stop, PollFlags::POLLIN),
                ],
                deadline,
            ) {
                Ok(seen) => seen,
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    warn!(
                        "closing the connection of {:?}: its request line was not finished within {PARTIAL_LINE_DEADLINE:?}",
                        self.peer
                    );
                    let reply = Reply::Error(format!(
                        "Request line not finished within {} s; closing the connection",
                        PARTIAL_LINE_DEADLINE.as_secs()
                    ));
                    let _ = self.send(&reply.encode(Dialect::Upper));
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
            let read_at = Instant::now();
            match nix::unistd::read(&self.stream, &mut buf) {
                Ok(0) => return,
                Ok(n) => lines.extend(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
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
                        self.listener.stop.handle().stop();
                        return;
                    }
                };
                if let Err(err) = self.send(&reply) {
                    debug!("cannot answer {:?}: {err}", self.peer);
                    return;
                }
            }
            partial_since = match (lines.has_partial_line(), answered) {
                (false, _) => None,
                (true, true) => Some(read_at),
                (true, false) => partial_since.or(Some(read_at)),
            };
        }
    }

    fn send(&self, reply: &str) -> io::Result<()> {
        send_all(
            &self.stream,
            reply.as_bytes(),
            Instant::now() + WRITE_DEADLINE,
            Some(self.listener.stop.as_fd()),
        )
    }

    /// The reply to one line: from the listener itself for an over-long
    /// line or a refused grant, else from the controller.
    fn answer(&self, line: Result<Vec<u8>, heli_core::Error>) -> Answer {
        let line = match line {
            Ok(line) => line,
            Err(err) => return Answer::Reply(Reply::error(&err).encode(Dialect::Upper)),
        };
        if let Some(refusal) = self.refuse_grant(&line) {
            return Answer::Reply(refusal);
        }
        let (incoming, reply) = Incoming::new(self.peer, &line);
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
            Reply::Error("The controller dropped the request without answering".into())
                .encode(dialect)
        }))
    }

    /// The `ERROR:` reply to a `GRANT_ACCESS` for a process that is neither
    /// the peer nor one of its descendants; `None` for any other line.
    fn refuse_grant(&self, line: &[u8]) -> Option<String> {
        let (request, dialect) = parse_request(line).ok()?;
        if request.command(Dialect::Upper) != "GRANT_ACCESS" {
            return None;
        }
        let pid = request.grant_pid();
        let allowed = match (pid, self.peer.pid, self.peer_start) {
            (Some(pid), Some(peer), Some(start)) => proc::is_self_or_descendant(pid, peer, start)
                .unwrap_or_else(|err| {
                    warn!("cannot tell whether PID {pid} descends from PID {peer}: {err}");
                    false
                }),
            _ => false,
        };
        if allowed {
            return None;
        }
        let you = self.peer.pid.map_or_else(
            || "your PID is unknown".to_owned(),
            |pid| format!("you are PID {pid}"),
        );
        let what = pid.map_or_else(
            || "GRANT_ACCESS".to_owned(),
            |pid| format!("GRANT_ACCESS {pid}"),
        );
        warn!(
            "refused {what} from {:?} on session {}: not the client or one of its descendants",
            self.peer, self.listener.name
        );
        Some(
            Reply::Error(format!(
                "{what} refused: it must be your own process or one of its descendants ({you})"
            ))
            .encode(dialect),
        )
    }
}

/// A client's end of a [`UnixSocketTransport`]: one connection, any number
/// of round trips.
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
