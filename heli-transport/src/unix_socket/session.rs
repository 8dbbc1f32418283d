//! Sessions: their names, their lock files, listing them and removing
//! the dead ones.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, Uid, UnlinkatFlags};

use super::peer::{connect_socket, credentials, server_pid, PROBE_TIMEOUT};
use super::runtime_dir::{file_type, open_private_dir, stat_at};
use crate::io::{annotate, refuse};

/// The longest session name.
pub(super) const MAX_NAME: usize = 64;

/// One `*.sock` entry of a runtime directory, as
/// [`UnixSocketTransport::sessions_in`](crate::UnixSocketTransport::sessions_in) found it.
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

/// What [`UnixSocketTransport::sessions_in`](crate::UnixSocketTransport::sessions_in) found behind a socket file.
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

/// The sessions of `dir`, for
/// [`UnixSocketTransport::sessions_in`](crate::UnixSocketTransport::sessions_in).
pub(super) fn list(dir: &Path) -> io::Result<Vec<SessionEntry>> {
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

/// Removes the dead sessions of `dir`, socket and lock file, as [`list`]
/// does: what a controller starting there does first, so that those of
/// controllers killed outright do not pile up. Live sessions, sessions
/// whose lock is held and foreign entries are left alone; no lock is
/// waited for, and each probe is bounded by [`PROBE_TIMEOUT`]. A failure
/// is logged: it never keeps a controller from starting.
pub(super) fn sweep(dir: &Path) {
    if let Err(err) = list(dir) {
        warn!("cannot look for dead sessions in {}: {err}", dir.display());
    }
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

/// The directory of the socket at `path`.
pub(super) fn socket_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The file names of the socket at `path` and of its lock.
pub(super) fn file_names(path: &Path) -> io::Result<(&OsStr, OsString)> {
    let Some(file) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a socket file", path.display()),
        ));
    };
    Ok((file, lock_name(file)))
}

/// `x.sock` -> `x.lock`; another name gets `.lock` appended.
fn lock_name(file: &OsStr) -> OsString {
    let bytes = file.as_bytes();
    let stem = bytes.strip_suffix(b".sock").unwrap_or(bytes);
    let mut lock = OsStr::from_bytes(stem).to_owned();
    lock.push(".lock");
    lock
}

pub(super) fn check_name(name: &str) -> io::Result<()> {
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

/// Takes the exclusive lock of the session's lock file `lock` in `dir`,
/// creating it (mode 0600) if need be, trying for `wait` at most; `None`
/// when another process holds it.
///
/// A lock file is removed by whoever holds its lock: after locking, the
/// file must still be the one at that name, else we locked a removed file
/// and try again.
pub(super) fn lock_session(
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
        assert_eq!(socket_dir(Path::new("/x/y/demo.sock")), Path::new("/x/y"));
        assert_eq!(socket_dir(Path::new("rel.sock")), Path::new("."));
        assert!(file_names(Path::new("/")).is_err());
    }
}
