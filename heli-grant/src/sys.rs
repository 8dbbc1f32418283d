//! The system calls nix does not wrap, the nix way: one small function per
//! call, the `unsafe` call, `Errno::result`, a `SAFETY:` comment.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;

/// `pidfd_open(pid, 0)`: a descriptor that refers to process `pid` for as
/// long as it is held, immune to pid reuse; readable once the process exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and passes no memory; it returns
    // a new descriptor or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: the kernel just created this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`: signals exactly the process
/// the descriptor refers to, never a later process that reused its pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: all arguments are integers, the siginfo pointer is NULL, which
    // the call accepts (it then behaves like kill(2)).
    let res = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(res).map(drop).map_err(Into::into)
}

/// Makes the child spawned by `command` get SIGKILL when the thread that
/// spawned it exits, so a killed controller leaves no orphan behind; if that
/// thread is already gone when the child starts, the child exits at once.
pub(crate) fn kill_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    let hook = move || -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        // The parent may have died between fork and prctl: then nobody
        // delivers the signal, and we are already someone else's child.
        if nix::unistd::getppid() != parent {
            return Err(io::Error::other(
                "the controller died while starting the target",
            ));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec; it makes two
    // system calls (prctl, getppid) and builds an error only on failure,
    // touching no lock or state shared with other threads of the parent.
    unsafe {
        command.pre_exec(hook);
    }
}
