//! One process held by a pidfd, which no later process can take over.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use heli_core::{Pid, ProcessId};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::process::{pidfd_open, PidfdFlags};

use crate::process::Proc;

/// One process, held by a pidfd (a file descriptor for the process itself,
/// Linux 5.3 and later).
///
/// A pid names whichever process has it now: once a process has exited
/// and been reaped, the kernel may give its pid to a new one, and even
/// its start time may match (it counts in clock ticks, 10 ms on most
/// systems). A pidfd keeps referring to the process it was opened for,
/// and becomes readable once that process has exited: a handle is asked
/// [`is_alive`](ProcessHandle::is_alive) without any pid lookup.
///
/// A handle is made only when the process's [identity](ProcessId) could be
/// tied to the pidfd: its `/proc` entry is read after the pidfd was
/// opened, and counts only if the process was still running after the
/// read (its pid cannot have been reused before it exited).
///
/// # Race conditions
///
/// [`from_pidfd`](ProcessHandle::from_pidfd) is exact: the kernel made the
/// pidfd for the process (`SO_PEERPIDFD` on a socket, Linux 6.5 and later).
/// [`open`](ProcessHandle::open) opens whatever process has the pid now
/// (`pidfd_open`): if the process named exited and its pid went to a new
/// one *before* the call, with the same start time to the clock tick,
/// nothing can tell them apart. Open the handle as soon as the pid is
/// known.
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, Processes};
/// use heli_proc::{ProcessHandle, ProcFs};
///
/// let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
/// let pid = Pid::new(child.id()).unwrap();
/// let id = ProcFs.identity(pid)?.unwrap();
/// let handle = ProcessHandle::open(id)?.expect("it runs");
/// assert!(handle.is_alive());
/// assert_eq!(handle.identity(), Some(id));
///
/// child.kill()?;
/// child.wait()?;
/// assert!(!handle.is_alive());
/// assert_eq!(handle.identity(), None);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ProcessHandle {
    pidfd: OwnedFd,
    id: ProcessId,
}

impl ProcessHandle {
    /// Opens a handle on process `id`; `None` when it no longer runs (its
    /// pid is free, or names a process with another start time).
    ///
    /// # Errors
    ///
    /// When the pidfd cannot be opened (a kernel older than 5.3, no file
    /// descriptors left) or `/proc` cannot be read.
    pub fn open(id: ProcessId) -> io::Result<Option<ProcessHandle>> {
        let raw = i32::from(id.pid);
        let Some(pid) = rustix::process::Pid::from_raw(raw) else {
            return Ok(None);
        };
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(err) => return Err(io::Error::from(err)),
        };
        let handle = ProcessHandle::tie(pidfd, id.pid)?;
        Ok(handle.filter(|handle| handle.id == id))
    }

    /// A handle on the process `pidfd` refers to; `None` when it has
    /// exited, or its pid is not visible here (another pid namespace).
    ///
    /// # Errors
    ///
    /// When `pidfd` is not a pidfd, or `/proc` cannot be read.
    pub fn from_pidfd(pidfd: OwnedFd) -> io::Result<Option<ProcessHandle>> {
        match pidfd_pid(&pidfd)? {
            Some(pid) => ProcessHandle::tie(pidfd, pid),
            None => Ok(None),
        }
    }

    /// The handle of `pidfd`'s process, whose pid is `pid`: its identity is
    /// read from `/proc`, and holds if the process still runs afterwards.
    fn tie(pidfd: OwnedFd, pid: Pid) -> io::Result<Option<ProcessHandle>> {
        let Some(proc) = Proc::open(pid)? else {
            return Ok(None);
        };
        let Some(id) = proc.identity()? else {
            return Ok(None);
        };
        let handle = ProcessHandle { pidfd, id };
        Ok(handle.is_alive().then_some(handle))
    }

    /// The process's pid (which names another process once this one has
    /// exited and was reaped).
    pub fn pid(&self) -> Pid {
        self.id.pid
    }

    /// Whether the process has not exited yet (a zombie has). Never reads
    /// `/proc`: it polls the pidfd, without waiting. An error of `poll`
    /// counts as exited.
    pub fn is_alive(&self) -> bool {
        loop {
            let mut polled = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut polled, PollTimeout::ZERO) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Its identity (pid and start time) while it runs; `None` for good
    /// once it has exited.
    pub fn identity(&self) -> Option<ProcessId> {
        self.is_alive().then_some(self.id)
    }
}

impl AsFd for ProcessHandle {
    /// The pidfd: readable once the process has exited.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// The pid of `pidfd`'s process, from the `Pid:` line of its
/// `/proc/self/fdinfo` entry: `None` when the process has exited and was
/// reaped (-1) or is in no pid namespace of ours (0).
fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<Option<Pid>> {
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let text = std::fs::read_to_string(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))?;
    let pid = text
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|value| value.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: not a pidfd (no Pid: line)"),
            )
        })?;
    Ok(u32::try_from(pid).ok().and_then(Pid::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use heli_core::Processes;
    use std::process::{Command, Stdio};

    use crate::ProcFs;

    /// `cat`, which runs until its input closes.
    fn cat() -> (std::process::Child, ProcessId) {
        let child = Command::new("cat").stdin(Stdio::piped()).spawn().unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let id = ProcFs.identity(pid).unwrap().unwrap();
        (child, id)
    }

    #[test]
    fn a_handle_sees_its_process_exit_even_before_it_is_reaped() {
        let (mut child, id) = cat();
        let handle = ProcessHandle::open(id).unwrap().unwrap();
        assert_eq!(handle.pid(), id.pid);
        assert!(handle.is_alive());
        assert_eq!(handle.identity(), Some(id));
        drop(child.stdin.take());
        // Exited, not reaped: a zombie, waitable still.
        let raw = nix::unistd::Pid::from_raw(child.id() as i32);
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        nix::sys::wait::waitid(nix::sys::wait::Id::Pid(raw), flags).unwrap();
        assert!(!handle.is_alive());
        assert_eq!(handle.identity(), None);
        child.wait().unwrap();
        assert_eq!(handle.identity(), None);
        // Nothing to open any more.
        assert!(ProcessHandle::open(id).unwrap().is_none());
    }

    #[test]
    fn another_start_time_is_another_process() {
        let (mut child, id) = cat();
        let other = ProcessId {
            pid: id.pid,
            start_time: id.start_time + 1,
        };
        assert!(ProcessHandle::open(other).unwrap().is_none());
        drop(child.stdin.take());
        child.wait().unwrap();
    }

    #[test]
    fn a_pidfd_made_elsewhere_names_its_process() {
        let (mut child, id) = cat();
        let raw = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).unwrap();
        let handle = ProcessHandle::from_pidfd(pidfd).unwrap().unwrap();
        assert_eq!(handle.identity(), Some(id));
        // A pidfd of a process that has exited gives no handle.
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(ProcessHandle::from_pidfd(pidfd).unwrap().is_none());
        assert!(!handle.is_alive());
        // Any other descriptor is refused.
        let (read, _write) = nix::unistd::pipe().unwrap();
        let err = ProcessHandle::from_pidfd(read).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
