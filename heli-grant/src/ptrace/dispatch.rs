//! Syscall User Dispatch: a thread that has it on gets no injection.
//!
//! A thread that turned Syscall User Dispatch on
//! (`prctl(PR_SET_SYSCALL_USER_DISPATCH)`, as Wine does to run Windows
//! programs that make Linux system calls directly) has every system call
//! made outside one allowed region, while its selector byte says "block",
//! turned into a `SIGSYS` (`si_code` `SYS_USER_DISPATCH`) for its own
//! handler to emulate. An injected call from the vDSO would be one of
//! them: the call is not made, and the `SIGSYS`, held until the registers
//! are back, would have the program's handler emulate a call the program
//! never made. So the injector reads the setting while the thread is
//! stopped (`PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG`, Linux 6.2) and
//! refuses such a thread; on older kernels, which cannot tell, it drops a
//! dispatch `SIGSYS` raised by the injected instruction and reports the
//! call as refused.

use std::io;

use log::debug;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::sys;

use super::refusal::Refusal;

/// `si_code` of a `SIGSYS` raised by Syscall User Dispatch.
pub(super) const SYS_USER_DISPATCH: i32 = 2;

/// `PR_SYS_DISPATCH_OFF`.
const DISPATCH_OFF: u64 = 0;

/// Refuses thread `tid` of PID `pid` (stopped) if it has Syscall User
/// Dispatch on.
///
/// # Errors
///
/// [`PermissionDenied`](io::ErrorKind::PermissionDenied) when it has: the
/// injection is impossible (a granter may try another way: the error says
/// [`Refusal::UserDispatch`]).
pub(super) fn refuse_if_on(tid: Pid, pid: u32) -> io::Result<()> {
    let config = match sys::ptrace_get_config::<sys::SudConfig>(tid.as_raw()) {
        Ok(config) => config,
        // A kernel before 6.2 (EIO: no such request) cannot say.
        Err(err) => {
            if err != Errno::EIO {
                debug!("PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG on thread {tid}: {err}");
            }
            return Ok(());
        }
    };
    if config.mode == DISPATCH_OFF {
        return Ok(());
    }
    Err(Refusal::UserDispatch.error(
        io::ErrorKind::PermissionDenied,
        format!(
            "thread {tid} of PID {pid} uses Syscall User Dispatch (as Wine does: selector \
             byte at {:#x}, calls allowed from {:#x} to {:#x}): the kernel would hand an \
             injected system call to the program's own SIGSYS handler, to emulate a call it \
             never made; refusing to inject",
            config.selector,
            config.offset,
            config.offset.wrapping_add(config.len)
        ),
    ))
}
