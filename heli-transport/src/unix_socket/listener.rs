//! The controller's end: accepting connections, admitting them (peer
//! credentials, the connection table's limit), and the threads that serve
//! them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use heli_core::log_limit::Allowed;
use heli_core::protocol::{Dialect, Reply};
use heli_core::{Credentials, Event, GrantHolder, Listener, LogLimit, Peer, Stopper};
use heli_proc::ProcessHandle;
use log::{info, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, Flock, OFlag};
use nix::poll::PollFlags;
use nix::sys::socket::{self, Backlog, UnixAddr};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, Uid, UnlinkatFlags};

use super::connections::{Connections, Limits};
use super::peer::{
    connect_socket, credentials, peer_process, server_pid, stream_socket, PROBE_TIMEOUT,
};
use super::runtime_dir::{check_socket, make_private_dir, stat_at};
use super::serve::Served;
use super::session::{file_names, lock_session, socket_dir, sweep};
use crate::io::{annotate, send_all, wait_any};
use crate::stop::{StopHandle, StopSignal};

/// How long `listen` waits for a session's lock, held briefly by clients
/// and starting controllers that clean up stale sockets.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Pending connections the kernel queues for the accept loop.
const BACKLOG: i32 = 1024;
/// A connection thread's stack: it reads lines and waits on channels.
const CONNECTION_STACK: usize = 256 * 1024;

/// The controller's end of a
/// [`UnixSocketTransport`](crate::UnixSocketTransport); dropping it removes
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
    limits: Limits,
    /// Which connection holds the grant, as the controller says.
    holder: GrantHolder,
    stop: StopSignal,
    /// Held until the files are removed (fields drop after `drop`).
    _locked: Flock<File>,
}

impl UnixSocketListener {
    /// Listens on the socket `path` of session `name`: see
    /// [`Transport::listen`](heli_core::Transport::listen), and
    /// [`UnixSocketTransport`](crate::UnixSocketTransport#race-conditions)
    /// for the lock file.
    pub(super) fn bind(name: &str, path: &Path, limits: Limits) -> io::Result<Self> {
        let (file, lock) = file_names(path)?;
        let dir_path = socket_dir(path);
        let dir = make_private_dir(dir_path)?;
        // Sockets of controllers that died, ours or others', go first.
        sweep(dir_path);

        // One controller per session name. A live one is named at once; a
        // client or a controller cleaning up stale sockets holds the lock
        // for an instant.
        let locked = match lock_session(&dir, dir_path, &lock, Duration::ZERO)? {
            Some(locked) => locked,
            None => {
                if let Ok(stream) = connect_socket(path, Instant::now() + PROBE_TIMEOUT) {
                    return Err(served_by(name, server_pid(&stream)));
                }
                match lock_session(&dir, dir_path, &lock, LOCK_WAIT)? {
                    Some(locked) => locked,
                    None => return Err(in_use(name, path, &dir, &lock)),
                }
            }
        };
        let mut locked = Some(locked);
        match bind_locked(name, path, &dir, file, &mut locked) {
            Ok((socket, socket_id)) => Ok(UnixSocketListener {
                name: name.to_owned(),
                path: path.to_owned(),
                file: file.to_owned(),
                lock,
                socket_id,
                socket,
                limits,
                holder: GrantHolder::default(),
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
    fn accept_one<'env>(
        &'env self,
        serving: &'env Serving<'env>,
    ) -> io::Result<Option<Served<'env>>> {
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

    /// Authenticates a new connection: what serving it takes, counted in
    /// the table, or `None` when it was turned away.
    fn admit<'env>(
        &'env self,
        stream: UnixStream,
        id: u64,
        serving: &'env Serving<'env>,
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
            if let Some(note) = serving.refused(pid) {
                warn!(
                    "refused a connection to session {} from PID {pid} of uid {uid}: only uid {me} may use it{note}",
                    self.name
                );
            }
            refuse_connection(
                &stream,
                &format!(
                    "permission denied: session {} belongs to uid {me}, not to uid {uid}",
                    self.name
                ),
            );
            return None;
        }
        let slot = match serving.connections.admit(id, stream) {
            Ok(slot) => slot,
            Err(stream) => {
                let max = self.limits.max_connections;
                if let Some(note) = serving.refused(pid) {
                    warn!(
                        "refused a connection to session {} from PID {pid}: {max} connections are open, none idle long enough to make room{note}",
                        self.name
                    );
                }
                refuse_connection(
                    &stream,
                    &format!(
                        "too many connections to session {} ({max}); try again later",
                        self.name
                    ),
                );
                return None;
            }
        };
        // Who connected, held by a pidfd: its pid alone may be reused
        // (with a start time equal to the clock tick) once it has exited.
        let process = peer_process(&slot.stream, pid);
        let peer = Peer {
            connection: id,
            credentials: Some(Credentials {
                uid,
                process: process.as_ref().and_then(ProcessHandle::identity),
            }),
        };
        Some(Served {
            session: &self.name,
            stop: &self.stop,
            slot,
            connections: &serving.connections,
            peer,
            process,
            events: serving.events,
            stopping: serving.stopping.clone(),
            warnings: &serving.warnings,
            pid,
        })
    }
}

/// With the lock of session `name` held: records our pid in the lock
/// file, removes a stale socket at `path`, binds and listens. Returns the
/// listening socket and its file's device and inode; on error, nothing is
/// left but the lock file.
fn bind_locked(
    name: &str,
    path: &Path,
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
        Err(err) => return Err(annotate(err.into(), path)),
        Ok(stat) => {
            check_socket(&stat, path)?;
            match connect_socket(path, Instant::now() + PROBE_TIMEOUT) {
                // A controller that does not use the lock file.
                Ok(stream) => return Err(served_by(name, server_pid(&stream))),
                Err(err) if err.raw_os_error() == Some(Errno::ECONNREFUSED as i32) => {
                    match unlinkat(dir, file, UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(err) => return Err(annotate(err.into(), path)),
                    }
                    info!("replaced the stale socket of session {name} (its controller died)");
                }
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    return Err(served_by(name, None))
                }
                Err(err) => return Err(annotate(err, path)),
            }
        }
    }

    let fd = stream_socket()?;
    // Bound under a temporary name, made private and listening, then
    // renamed into place: a client that finds the socket finds it
    // listening (a controller just started is asked at once). Where the
    // temporary name would be too long for a socket address, the socket is
    // bound in place, and connecting may be refused until it listens.
    let mut temporary = OsString::from(".");
    temporary.push(file);
    temporary.push(".new");
    let temporary_path = socket_dir(path).join(&temporary);
    let (bound, bound_path) = match UnixAddr::new(&temporary_path) {
        Ok(_) => {
            match unlinkat(dir, temporary.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(err) => return Err(annotate(err.into(), &temporary_path)),
            }
            (temporary.as_os_str(), temporary_path.as_path())
        }
        Err(_) => (file, path),
    };
    let addr = UnixAddr::new(bound_path).map_err(|err| annotate(err.into(), path))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|err| annotate(err.into(), path))?;
    // Nobody can connect before `listen`, and the private directory
    // keeps others out until the mode is set.
    let listening = stat_at(dir, bound)
        .map_err(io::Error::from)
        .and_then(|stat| {
            std::fs::set_permissions(bound_path, std::fs::Permissions::from_mode(0o600))?;
            socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
            if bound != file {
                renameat(dir, bound, dir, file)?;
            }
            Ok((stat.st_dev, stat.st_ino))
        });
    match listening {
        Ok(socket_id) => Ok((UnixListener::from(fd), socket_id)),
        Err(err) => {
            let _ = unlinkat(dir, bound, UnlinkatFlags::NoRemoveDir);
            Err(annotate(err, path))
        }
    }
}

/// Why `listen` cannot take the lock of session `name`.
fn in_use(name: &str, path: &Path, dir: &OwnedFd, lock: &OsStr) -> io::Error {
    if let Ok(stream) = connect_socket(path, Instant::now() + PROBE_TIMEOUT) {
        return served_by(name, server_pid(&stream));
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
            "session {name} is locked by {who} (a controller starting or stopping?); try again or choose another name"
        ),
    )
}

/// Why `listen` refuses: a controller (`pid`) serves session `name`.
fn served_by(name: &str, pid: Option<u32>) -> io::Error {
    let who = pid.map_or_else(|| "PID unknown".to_owned(), |pid| format!("PID {pid}"));
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "a controller already serves session {name} ({who}); stop it or choose another name"
        ),
    )
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
    /// The connections being served (shared with the controller's way of
    /// closing one, [`GrantHolder::on_close`]).
    connections: Arc<Connections>,
    /// The last connection id given.
    next_id: AtomicU64,
    /// Why accepting ended, if it failed.
    failure: Mutex<Option<io::Error>>,
    /// Warnings a peer can cause here, as often as it likes (refused
    /// connections, unfinished request lines), limited per connecting pid.
    warnings: Mutex<LogLimit<i32>>,
}

impl<'env> Serving<'env> {
    /// Whether a refused connection of `pid` may be logged: see
    /// [`LogLimit`].
    fn refused(&self, pid: i32) -> Option<Allowed> {
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(pid, Instant::now())
    }

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
                    return;
                }
                // The connection is closed (and counted out); this thread
                // goes on accepting.
                Err(err) => {
                    warn!("cannot serve a connection of {:?}: {err}", served.peer);
                    drop(served);
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
        let connections = Arc::new(Connections::new(
            &self.name,
            self.limits,
            self.holder.clone(),
        ));
        let served = Arc::downgrade(&connections);
        self.holder.on_close(move |id, why| {
            if let Some(connections) = served.upgrade() {
                connections.close(id, why);
            }
        });
        let serving = Serving {
            listener: &*self,
            events,
            stopping,
            accepting: Mutex::new(Some(accepting)),
            connections,
            next_id: AtomicU64::new(0),
            failure: Mutex::new(None),
            warnings: Mutex::new(LogLimit::new()),
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

    /// The connection holding the grant is never closed, however long it
    /// stays idle, nor to make room for another.
    fn watch_grant(&mut self, holder: GrantHolder) {
        self.holder = holder;
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
