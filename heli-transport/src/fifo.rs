//! Named pipes in a private directory, compatible with the original
//! Python helicopter-parent.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use heli_core::protocol::LineBuffer;
use heli_core::{exchange, Connection, Event, Listener, Peer, Transport};
use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, Flockable, OFlag};
use nix::poll::PollFlags;
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{mkfifoat, unlinkat, Uid, UnlinkatFlags};

use crate::io::{annotate, drain, has_input, read_line, refuse, wait_any, write_all};
use crate::stop::{StopHandle, StopSignal};

const CONTROL: &str = "control";
const RESPONSE: &str = "response";
const PID_FILE: &str = "controller.pid";

/// How long a half-written request may wait for the rest of its line before
/// the controller drops it, so the next client's line starts clean.
const PARTIAL_LINE_DEADLINE: Duration = Duration::from_secs(2);

/// Two named pipes: `control` (client to controller) and `response`
/// (controller to client), in a directory only the user can enter.
///
/// The default directory, `/tmp/heliparent_debug/user_<name>/`, and the
/// pipes' names are those of the original Python implementation, whose
/// clients work with a heli controller unchanged.
///
/// # Security
///
/// `/tmp` is shared with other users. The directory must be a real directory
/// (not a symbolic link), owned by the user, and closed to group and others
/// (mode 0700); the pipes must be FIFOs owned by the user. Anything else is
/// refused with an error saying what is wrong. Every file is opened relative
/// to a descriptor of the checked directory, never following a link.
///
/// # No lost replies, no hangs
///
/// The controller keeps both pipes open for reading *and* writing. So a
/// client's open never blocks, a reply written before the client opened the
/// response pipe waits in the pipe instead of being lost, and every read and
/// write has a deadline. Clients of this crate take a lock on the control
/// pipe for the length of a request, so two of them never read each other's
/// replies. The controller holds a lock on the response pipe from reading a
/// request until its reply is written; a client waits until no request is
/// unread and that lock is free, then drains stale replies (of a client
/// that gave up) before sending its own, so a late reply never reaches the
/// next client.
///
/// # Examples
///
/// ```no_run
/// use heli_core::Client;
/// use heli_transport::FifoTransport;
///
/// let client = Client::new(FifoTransport::for_current_user()?);
/// println!("target: {}", client.target_pid()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct FifoTransport {
    dir: PathBuf,
}

impl FifoTransport {
    /// The directory under which each user's FIFO directory is made.
    pub const BASE: &'static str = "/tmp/heliparent_debug";

    /// Pipes in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FifoTransport { dir: dir.into() }
    }

    /// Pipes in `/tmp/heliparent_debug/user_<name>/` for the effective user.
    ///
    /// # Errors
    ///
    /// When the user database cannot be read.
    pub fn for_current_user() -> io::Result<Self> {
        let uid = Uid::effective();
        let name = match nix::unistd::User::from_uid(uid)? {
            Some(user) => user.name,
            None => uid.to_string(),
        };
        Ok(FifoTransport::new(
            Path::new(Self::BASE).join(format!("user_{name}")),
        ))
    }

    /// The directory holding the pipes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the directory without following a link and checks it is private.
    fn open_dir(&self) -> io::Result<OwnedFd> {
        let dir = nix::fcntl::open(
            &self.dir,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => {
                refuse(&self.dir, "is not a directory (a symbolic link?)")
            }
            Errno::ENOENT => io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", self.dir.display()),
            ),
            err => annotate(err.into(), &self.dir),
        })?;
        let stat = fstat(&dir)?;
        let me = Uid::effective().as_raw();
        if stat.st_uid != me {
            return Err(refuse(
                &self.dir,
                &format!("is owned by uid {}, not by you (uid {me})", stat.st_uid),
            ));
        }
        if stat.st_mode & 0o077 != 0 {
            return Err(refuse(
                &self.dir,
                &format!(
                    "is open to group or others (mode {:04o}); it must be 0700",
                    stat.st_mode & 0o7777
                ),
            ));
        }
        Ok(dir)
    }

    /// Creates the directory (and the shared base above the default one)
    /// when missing; returns whether it did.
    fn create_dir(&self) -> io::Result<bool> {
        if self.dir.parent() == Some(Path::new(Self::BASE)) {
            make_shared_base(Path::new(Self::BASE))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(annotate(err, &self.dir)),
        }
    }
}

/// `/tmp/heliparent_debug` is shared by every user, like `/tmp`: world
/// writable with the sticky bit, so nobody can rename another's directory.
fn make_shared_base(base: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o1777).create(base) {
        Ok(()) => {
            // The umask took bits away.
            std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(annotate(err, base)),
    }
    let meta = std::fs::symlink_metadata(base)?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() {
        return Err(refuse(base, "is not a directory (a symbolic link?)"));
    }
    let me = Uid::effective().as_raw();
    let foreign = meta.uid() != me && meta.uid() != 0;
    if foreign && meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(refuse(
            base,
            &format!(
                "belongs to uid {} and others may write to it without the sticky bit (mode {:04o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Checks that `fd` is a FIFO owned by the user.
fn check_fifo(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let stat = fstat(fd)?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFIFO {
        return Err(refuse(path, "is not a named pipe"));
    }
    if stat.st_uid != Uid::effective().as_raw() {
        return Err(refuse(
            path,
            &format!("is owned by uid {}, not by you", stat.st_uid),
        ));
    }
    Ok(())
}

impl Transport for FifoTransport {
    type Listener = FifoListener;
    type Connection = FifoConnection;

    fn listen(&self) -> io::Result<FifoListener> {
        let created_dir = self.create_dir()?;
        let dir = self.open_dir()?;

        // One controller per directory: the pid file's lock says who.
        let pid_fd = openat(
            &dir,
            PID_FILE,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|err| match err {
            Errno::ELOOP => refuse(&self.dir.join(PID_FILE), "is a symbolic link"),
            err => annotate(err.into(), &self.dir.join(PID_FILE)),
        })?;
        let mut pid_file = match Flock::lock(File::from(pid_fd), FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut pid_file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = pid_file.read_to_string(&mut text);
                let who = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("PID {pid}"),
                    Err(_) => "another process".to_owned(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another controller ({who}) is already serving {}; stop it first or use another directory",
                        self.dir.display()
                    ),
                ));
            }
            Err((_, err)) => return Err(err.into()),
        };
        pid_file.set_len(0)?;
        pid_file.rewind()?;
        write!(pid_file, "{}", std::process::id())?;

        // We hold the lock: whatever pipes are there belong to a dead
        // controller. Replace them.
        let open_fifo = |name: &str| -> io::Result<OwnedFd> {
            let path = self.dir.join(name);
            match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => debug!("removed stale {}", path.display()),
                Err(Errno::ENOENT) => {}
                Err(err) => return Err(annotate(err.into(), &path)),
            }
            mkfifoat(&dir, name, Mode::from_bits_truncate(0o600))
                .map_err(|err| annotate(err.into(), &path))?;
            let fd = openat(
                &dir,
                name,
                OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| annotate(err.into(), &path))?;
            check_fifo(&fd, &path)?;
            Ok(fd)
        };
        let control = open_fifo(CONTROL)?;
        let response = open_fifo(RESPONSE)?;
        Ok(FifoListener {
            path: self.dir.clone(),
            dir,
            created_dir,
            control,
            response,
            _pid_file: pid_file,
            stop: StopSignal::new()?,
            reply_timeout: Duration::from_secs(2),
        })
    }

    /// Opens the pipes; never blocks (the timeout applies to each request).
    fn connect(&self, _timeout: Duration) -> io::Result<FifoConnection> {
        let dir = self.open_dir()?;
        let open = |name: &str, flags: OFlag| -> io::Result<OwnedFd> {
            let path = self.dir.join(name);
            let fd = openat(
                &dir,
                name,
                flags | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| match err {
                // Opening a FIFO for writing with nobody reading it.
                Errno::ENXIO => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "no controller reads {} (left by a controller that died?)",
                        path.display()
                    ),
                ),
                Errno::ENOENT => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} not found", path.display()),
                ),
                Errno::ELOOP => refuse(&path, "is a symbolic link"),
                err => annotate(err.into(), &path),
            })?;
            check_fifo(&fd, &path)?;
            Ok(fd)
        };
        let control = File::from(open(CONTROL, OFlag::O_WRONLY)?);
        let response = open(RESPONSE, OFlag::O_RDONLY)?;
        // Only to see whether requests wait unread; never read from.
        let unread = open(CONTROL, OFlag::O_RDONLY)?;

        Ok(FifoConnection {
            control,
            response,
            unread,
        })
    }

    fn describe(&self) -> String {
        format!("{} (named pipes)", self.dir.display())
    }
}

/// Waits between tries of a lock (flock has no timeout): short at first,
/// since the controller holds its lock only for microseconds after a reply,
/// then longer, up to 2 ms.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_micros(20))
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(2));
    }
}

/// Takes the flock(2) lock `arg` (a non-blocking one) of `fd`'s open file,
/// trying again until `deadline`; `TimedOut` saying `what` then.
fn lock_until<T: Flockable>(
    mut fd: T,
    arg: FlockArg,
    deadline: Instant,
    what: &str,
) -> io::Result<Flock<T>> {
    let mut backoff = Backoff::new();
    loop {
        match Flock::lock(fd, arg) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => fd = back,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()))
            }
            Err((_, err)) => return Err(err.into()),
        }
        backoff.sleep();
    }
}

/// The controller's end of a [`FifoTransport`]; dropping it removes the
/// pipes and the pid file (and the directory, if it made it).
#[derive(Debug)]
pub struct FifoListener {
    path: PathBuf,
    dir: OwnedFd,
    created_dir: bool,
    control: OwnedFd,
    response: OwnedFd,
    _pid_file: Flock<File>,
    stop: StopSignal,
    reply_timeout: Duration,
}

impl FifoListener {
    /// Takes the response pipe's lock, held while answering the requests
    /// read (see [`FifoTransport::connect`]); unlocked when dropped.
    fn busy(&self) -> Option<Flock<OwnedFd>> {
        // Clients hold it for an instant only; still, never wait unbounded.
        let deadline = Instant::now() + self.reply_timeout;
        let locked = self.response.try_clone().and_then(|response| {
            lock_until(
                response,
                FlockArg::LockExclusiveNonblock,
                deadline,
                "a client holds it",
            )
        });
        locked
            .inspect_err(|err| warn!("answering without the response pipe's lock: {err}"))
            .ok()
    }
}

impl Listener for FifoListener {
    type Stopper = StopHandle;

    fn stopper(&self) -> StopHandle {
        self.stop.handle()
    }

    fn serve(&mut self, events: &Sender<Event>) -> io::Result<()> {
        let mut lines = LineBuffer::new();
        let mut buf = [0u8; 4096];
        let peer = Peer::default();
        loop {
            let deadline = lines
                .has_partial_line()
                .then(|| Instant::now() + PARTIAL_LINE_DEADLINE);
            let seen = match wait_any(
                &[
                    (self.control.as_fd(), PollFlags::POLLIN),
                    (self.stop.as_fd(), PollFlags::POLLIN),
                ],
                deadline,
            ) {
                Ok(seen) => seen,
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    warn!("dropping a request line left unfinished for {PARTIAL_LINE_DEADLINE:?}");
                    lines = LineBuffer::new();
                    continue;
                }
                Err(err) => return Err(err),
            };
            if !seen[1].is_empty() {
                return Ok(());
            }
            // Before reading, so that a client never sees the request gone
            // from the pipe and the lock free while it is being answered.
            let _busy = self.busy();
            match nix::unistd::read(&self.control, &mut buf) {
                Ok(n) => lines.extend(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
            while let Some(line) = lines.next_line() {
                // Only one client at a time may use the pipes: a reply still
                // unread belongs to one that gave up.
                drain(&self.response);
                let Some(reply) = exchange(events, peer, line) else {
                    return Ok(());
                };
                let deadline = Instant::now() + self.reply_timeout;
                if let Err(err) = write_all(&self.response, reply.as_bytes(), deadline) {
                    warn!("cannot write reply {:?}: {err}", reply.trim_end());
                }
            }
        }
    }
}

impl Drop for FifoListener {
    fn drop(&mut self) {
        for name in [CONTROL, RESPONSE, PID_FILE] {
            if let Err(err) = unlinkat(&self.dir, name, UnlinkatFlags::NoRemoveDir) {
                if err != Errno::ENOENT {
                    warn!("cannot remove {}: {err}", self.path.join(name).display());
                }
            }
        }
        if self.created_dir {
            // Fails harmlessly if someone put something else there.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// A client's end of a [`FifoTransport`], holding the request lock.
#[derive(Debug)]
pub struct FifoConnection {
    control: File,
    response: OwnedFd,
    /// The control pipe opened for reading, only to see whether requests
    /// wait unread; never read from.
    unread: OwnedFd,
}

impl Connection for FifoConnection {
    /// Takes the request lock for the length of one round trip, so a
    /// connection may be kept open (say, while a debugger runs) without
    /// holding other clients up.
    fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
        // One request at a time among our clients. The lock belongs to the
        // open file, which the clone shares; dropping it unlocks.
        let _turn = lock_until(
            self.control.try_clone()?,
            FlockArg::LockExclusiveNonblock,
            deadline,
            "another client kept the controller busy",
        )?;
        // A client that gave up may have left a request the controller is
        // still answering. The controller holds the response pipe's lock
        // from before it reads a request until its reply is written: once
        // no request is unread and *then* the lock is free, every earlier
        // reply is in the pipe, and draining it leaves ours alone.
        let mut backoff = Backoff::new();
        loop {
            if !has_input(self.unread.as_fd())? {
                // Unlocked again at once.
                match Flock::lock(self.response.try_clone()?, FlockArg::LockSharedNonblock) {
                    Ok(_idle) => break,
                    Err((_, Errno::EWOULDBLOCK)) => {}
                    Err((_, err)) => return Err(err.into()),
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the controller is still busy with an earlier request",
                ));
            }
            backoff.sleep();
        }
        drain(&self.response);
        write_all(&self.control, line, deadline)?;
        let mut lines = LineBuffer::for_replies();
        read_line(&self.response, &mut lines, deadline)
    }
}
