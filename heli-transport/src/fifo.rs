//! Named pipes in a private directory, compatible with the original
//! Python helicopter-parent.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use heli_core::protocol::LineBuffer;
use heli_core::{exchange, Connection, Event, Listener, LogLimit, Peer, Transport};
use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, Flock, FlockArg, Flockable, OFlag};
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

/// How often, while a line is unfinished, the controller reads the control
/// pipe to see whether every writer has closed it: a writer that opened it
/// before the controller's read end did (see `ControlPipe`) and closes it
/// after leaves that read end no hang-up to see.
const WRITERS_CHECK: Duration = Duration::from_millis(50);

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
/// to a descriptor of the checked directory, never following a link (the
/// controller's fresh read ends of the control pipe are opened through its
/// own `/proc/self/fd` entry of the pipe it holds already).
///
/// # No lost replies, no hangs
///
/// The controller keeps the response pipe open for reading *and* writing,
/// and the control pipe open for reading, from before they appear (each is
/// made and opened under a temporary name, then renamed into place). So a
/// client's open never blocks,
/// a reply written before the client opened the response pipe waits in the
/// pipe instead of being lost, and every read and write has a deadline.
/// Clients of this crate take a lock on the control pipe for the length of
/// a request, so two of them never read each other's replies, and hold the
/// control pipe open for writing only while they write. The controller
/// holds a lock on the response pipe from reading the first byte of a
/// request until its reply is written; a client waits until no request is
/// unread and that lock is free, then drains stale replies (of a client
/// that gave up) before sending its own, so a late reply never reaches the
/// next client.
///
/// # Unfinished lines
///
/// A line is a request once its newline arrives. A line left unfinished is
/// dropped when every writer of the control pipe has closed it (its writer
/// is gone: nobody will finish it), or after 2 s without a byte; clients of
/// this crate wait for either before they write, so their request never
/// continues someone else's fragment. A writer that keeps the pipe open may
/// finish its line in several writes.
///
/// # What named pipes cannot prevent
///
/// Any process of the user can open the pipes and write anything, and the
/// controller cannot tell who wrote a line (requests come with no
/// [`Credentials`](heli_core::Credentials)): its policy refuses what is
/// never legitimate without knowing the asker. A writer that does not take
/// the lock can still interleave its bytes with a client's request in the
/// pipe, or read a reply meant for someone else; a fragment written while
/// another writer holds the pipe open is dropped only after 2 s, and a
/// writer that adds a byte to its line every second or so, without ending
/// it, holds clients of this crate up until it reaches the line length
/// limit. Use the
/// [`UnixSocketTransport`](crate::UnixSocketTransport) where that matters.
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
            // In a shared /tmp only its owner or root can remove it.
            return Err(refuse(
                &self.dir,
                &format!(
                    "is owned by uid {owner}, not by you (uid {me}); only uid {owner} or root \
                     can remove it: use a directory of your own",
                    owner = stat.st_uid
                ),
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

/// Opens pipe `name` of the directory `dir` (at `dir_path`) for a client,
/// without blocking or following a link, and checks it.
fn open_pipe(dir: &OwnedFd, dir_path: &Path, name: &str, mode: OFlag) -> io::Result<OwnedFd> {
    let path = dir_path.join(name);
    let fd = openat(
        dir,
        name,
        mode | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
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
        // controller. Replace them, each with a pipe made and opened under
        // a temporary name first: once `response` is there, both pipes are
        // open (a client that finds them never finds nobody reading, or
        // nobody keeping the response pipe open).
        let open_fifo = |name: &str, mode: OFlag| -> io::Result<OwnedFd> {
            let path = self.dir.join(name);
            let temporary = format!(".{name}.new");
            match unlinkat(&dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(err) => return Err(annotate(err.into(), &self.dir.join(&temporary))),
            }
            mkfifoat(&dir, temporary.as_str(), Mode::from_bits_truncate(0o600))
                .map_err(|err| annotate(err.into(), &path))?;
            let opened = openat(
                &dir,
                temporary.as_str(),
                mode | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| annotate(err.into(), &path))
            .and_then(|fd| {
                check_fifo(&fd, &path)?;
                if nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
                    debug!("replacing stale {}", path.display());
                }
                renameat(&dir, temporary.as_str(), &dir, name)
                    .map_err(|err| annotate(err.into(), &path))?;
                Ok(fd)
            });
            if opened.is_err() {
                let _ = unlinkat(&dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
            }
            opened
        };
        // Read only: the controller sees when every writer has closed it
        // (see `ControlPipe`).
        let control = ControlPipe(open_fifo(CONTROL, OFlag::O_RDONLY)?);
        // Read and write: a reply waits there for its client.
        let response = open_fifo(RESPONSE, OFlag::O_RDWR)?;
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
        // Someone reads the control pipe (else it is left by a controller
        // that died); it is opened for writing again for each request.
        drop(open_pipe(&dir, &self.dir, CONTROL, OFlag::O_WRONLY)?);
        let response = open_pipe(&dir, &self.dir, RESPONSE, OFlag::O_RDONLY)?;
        // Only to see whether requests wait unread, and to hold the
        // clients' lock; never read from.
        let unread = open_pipe(&dir, &self.dir, CONTROL, OFlag::O_RDONLY)?;

        Ok(FifoConnection {
            dir,
            path: self.dir.clone(),
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
    control: ControlPipe,
    response: OwnedFd,
    _pid_file: Flock<File>,
    stop: StopSignal,
    reply_timeout: Duration,
}

/// The control pipe's read end, the controller's only end of it, so that
/// it sees every writer close.
///
/// What Linux does with a FIFO's read end (checked on 6.18: open a read
/// end, open a writer, write, close it, and poll each end):
///
/// - Opening it `O_RDONLY | O_NONBLOCK` never blocks. Until a writer has
///   opened the pipe, `poll` shows nothing.
/// - Once a writer has opened the pipe and every writer has closed it,
///   `poll` shows `POLLHUP` (with `POLLIN` while bytes are left), and
///   `read` returns the bytes left, then 0. The hang-up lasts as long as
///   no writer has the pipe open (a writer opening clears it, closing
///   raises it again): to wait for more, the controller needs another
///   read end.
/// - The hang-up belongs to the open file, not to the pipe: a read end
///   opened after the last writer closed shows no `POLLHUP`, only the
///   bytes still in the pipe (which stay there while any end is open).
/// - A writer's `O_WRONLY | O_NONBLOCK` open fails (`ENXIO`) while no read
///   end is open: the new read end is opened before the old one closes.
///
/// So a `read` of 0 here means that every writer has closed the pipe:
/// a line left unfinished then has nobody to finish it.
#[derive(Debug)]
struct ControlPipe(OwnedFd);

impl ControlPipe {
    /// A new read end of the same pipe, opened through this one's
    /// `/proc/self/fd` entry (the kernel's link to this very pipe, even if
    /// its name was removed or replaced), without its hang-up; this one is
    /// closed after.
    fn reopen(&mut self) -> io::Result<()> {
        let own = format!("/proc/self/fd/{}", self.0.as_raw_fd());
        let fresh = nix::fcntl::open(
            own.as_str(),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| {
            io::Error::new(
                io::Error::from(err).kind(),
                format!("cannot open the control pipe again through {own}: {err}"),
            )
        })?;
        self.0 = fresh;
        Ok(())
    }
}

impl AsFd for ControlPipe {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl FifoListener {
    /// Takes the response pipe's lock, held from reading the first byte of
    /// a request until its reply is written (see [`FifoTransport`]);
    /// unlocked when dropped.
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
        // The response pipe's lock, while a request is read or answered.
        let mut busy = None;
        // Any writer can cause these warnings, as often as it likes.
        let mut dropped = LogLimit::new();
        // When the last byte came.
        let mut last_byte = Instant::now();
        loop {
            let dropped_at = last_byte + PARTIAL_LINE_DEADLINE;
            let deadline = lines
                .has_partial_line()
                .then(|| dropped_at.min(Instant::now() + WRITERS_CHECK));
            let seen = match wait_any(
                &[
                    (self.control.as_fd(), PollFlags::POLLIN),
                    (self.stop.as_fd(), PollFlags::POLLIN),
                ],
                deadline,
            ) {
                Ok(seen) => seen,
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    if Instant::now() < dropped_at {
                        // Read: 0 if every writer has closed the pipe,
                        // EAGAIN while one holds it open.
                        [PollFlags::empty(); 2]
                    } else {
                        if let Some(note) = dropped.check((), Instant::now()) {
                            warn!("dropping a request line left unfinished for {PARTIAL_LINE_DEADLINE:?}{note}");
                        }
                        lines = LineBuffer::new();
                        busy = None;
                        continue;
                    }
                }
                Err(err) => return Err(err),
            };
            if !seen[1].is_empty() {
                return Ok(());
            }
            // Before reading, so that a client never sees the request gone
            // from the pipe and the lock free while it is being answered.
            if busy.is_none() {
                busy = self.busy();
            }
            match nix::unistd::read(&self.control, &mut buf) {
                // Every writer has closed the pipe.
                Ok(0) => {
                    if lines.has_partial_line() {
                        if let Some(note) = dropped.check((), Instant::now()) {
                            warn!("dropping a request line left unfinished by a writer that closed the control pipe{note}");
                        }
                        lines = LineBuffer::new();
                    }
                    self.control.reopen()?;
                    busy = None;
                    continue;
                }
                Ok(n) => {
                    last_byte = Instant::now();
                    lines.extend(&buf[..n]);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    if !lines.has_partial_line() {
                        busy = None;
                    }
                    continue;
                }
                Err(err) => return Err(err.into()),
            }
            while let Some(line) = lines.next_line() {
                // Only one client at a time may use the pipes: a reply still
                // unread belongs to one that gave up.
                drain(&self.response);
                // A pipe cannot pass file descriptors: the controller sends
                // none here (it refuses AGENT_ATTACH: `passes_fds` is
                // false), and any would be closed.
                let Some(reply) = exchange(events, peer, line).map(|reply| reply.line) else {
                    return Ok(());
                };
                let deadline = Instant::now() + self.reply_timeout;
                if let Err(err) = write_all(&self.response, reply.as_bytes(), deadline) {
                    warn!("cannot write reply {:?}: {err}", reply.trim_end());
                }
            }
            // A line begun keeps the lock: no client of ours writes until
            // it is finished or dropped.
            if !lines.has_partial_line() {
                busy = None;
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

/// A client's end of a [`FifoTransport`].
#[derive(Debug)]
pub struct FifoConnection {
    /// The checked directory, and its path.
    dir: OwnedFd,
    path: PathBuf,
    response: OwnedFd,
    /// The control pipe opened for reading, only to see whether requests
    /// wait unread, and for the clients' lock; never read from.
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
            self.unread.try_clone()?,
            FlockArg::LockExclusiveNonblock,
            deadline,
            "another client kept the controller busy",
        )?;
        // A client that gave up may have left a request the controller is
        // still answering, and any writer may have left half a line. The
        // controller holds the response pipe's lock from before it reads a
        // request until its reply is written, and while a line is
        // unfinished: once no request is unread and *then* the lock is
        // free, every earlier reply is in the pipe (draining it leaves ours
        // alone), and our line starts a line.
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
        // Open for writing only now, and closed once written: a writer
        // keeping the pipe open would hide from the controller that
        // another writer left half a line.
        let control = open_pipe(&self.dir, &self.path, CONTROL, OFlag::O_WRONLY)?;
        if !same_file(&control, &self.unread)? {
            return Err(refuse(
                &self.path.join(CONTROL),
                "was replaced by another pipe",
            ));
        }
        write_all(&control, line, deadline)?;
        drop(control);
        let mut lines = LineBuffer::for_replies();
        read_line(&self.response, &mut lines, deadline)
    }
}

/// Whether `a` and `b` are open files of one file.
fn same_file(a: &OwnedFd, b: &OwnedFd) -> io::Result<bool> {
    let (a, b) = (fstat(a)?, fstat(b)?);
    Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
}
