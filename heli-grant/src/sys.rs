//! The system calls nix does not wrap, the nix way: one small function per
//! call, the `unsafe` call, `Errno::result`, a `SAFETY:` comment.

// The ptrace ones serve the injector, which other processors lack.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

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

/// Makes every child `command` spawns get SIGKILL when the thread that
/// spawned it exits (`PR_SET_PDEATHSIG`); if that thread is already gone
/// when the child starts, the spawn fails. A process that supervises a
/// child or hands it the terminal (the controller its target, a client its
/// debugger) then never leaves it behind, even when it is itself killed
/// with SIGKILL.
///
/// The signal follows the spawning *thread*: spawn from a thread that lives
/// as long as the child should.
///
/// # Examples
///
/// ```
/// use std::process::Command;
///
/// let mut command = Command::new("true");
/// heli_grant::kill_with_parent(&mut command);
/// assert!(command.status().unwrap().success());
/// ```
pub fn kill_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    let hook = move || -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        // The parent may have died between fork and prctl: then nobody
        // delivers the signal, and we are already someone else's child.
        if nix::unistd::getppid() != parent {
            return Err(io::Error::other("the parent died before the child started"));
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

/// `waitpid(tid, &status, WNOHANG | __WALL)`, retried on EINTR: the raw
/// status of thread `tid` (a child or a tracee of the calling thread) if it
/// has one to report now, `None` if not; never blocks.
///
/// nix's `waitpid` cannot describe a stop for a real-time signal (its
/// `Signal` has none) and fails *after* consuming the status; this one
/// returns every status as the kernel gives it.
pub(crate) fn waitpid_nohang(tid: libc::pid_t) -> Result<Option<libc::c_int>, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int for the duration of the
        // call; the other arguments are integers.
        let res = unsafe { libc::waitpid(tid, &mut status, libc::WNOHANG | libc::__WALL) };
        match Errno::result(res) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// `waitpid(tid, &status, __WALL)`: the raw status of thread `tid` (a
/// child or a tracee of the calling thread), blocking until it has one;
/// `EINTR` when a signal with a handler (a [`ThreadTimer`] tick) came
/// first.
pub(crate) fn waitpid_interruptible(tid: libc::pid_t) -> Result<libc::c_int, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the
    // call; the other arguments are integers.
    let res = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    Errno::result(res).map(|_| status)
}

/// The signal that interrupts a tracer thread's blocking wait: a real-time
/// signal that nothing else in this process handles, to which this
/// process then gives a handler that does nothing, without `SA_RESTART`
/// (so the wait returns `EINTR`); `None` when every candidate is taken.
/// It is only ever sent to a tracer thread, by its own [`ThreadTimer`].
pub(crate) fn wake_signal() -> Option<libc::c_int> {
    static SIGNAL: OnceLock<Option<libc::c_int>> = OnceLock::new();
    *SIGNAL.get_or_init(|| {
        // The highest ones first: glibc keeps the lowest for itself, and
        // programs that pick one mostly count from SIGRTMIN.
        let candidates = (libc::SIGRTMIN() + 8..=libc::SIGRTMAX()).rev().take(8);
        candidates.into_iter().find(|&signal| take_signal(signal))
    })
}

extern "C" fn wake(_signal: libc::c_int) {}

/// Gives `signal` our do-nothing handler if it has none (`SIG_DFL`).
fn take_signal(signal: libc::c_int) -> bool {
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, no flags,
    // an empty mask).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a NULL new action only reads the current one into `old`, a
    // valid, writable sigaction.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0
        || old.sa_sigaction != libc::SIG_DFL
    {
        return false;
    }
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = wake as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `new` is a valid sigaction whose handler does nothing (so it
    // is async-signal-safe) and whose mask is empty; no SA_RESTART.
    unsafe { libc::sigaction(signal, &new, std::ptr::null_mut()) == 0 }
}

/// `pthread_sigmask(SIG_UNBLOCK, {signal})`: lets `signal` reach the
/// calling thread (a thread inherits the mask of the one that started it).
fn unblock_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t for both calls, and
    // `signal` a valid signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
    }
    // SAFETY: `set` is read during the call; the old mask is not asked for.
    match unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// A per-thread POSIX timer (`timer_create` with `SIGEV_THREAD_ID`) that,
/// while armed, sends [`wake_signal`] to the thread that made it: a tick
/// that interrupts its blocking waits. Deleted when dropped.
#[derive(Debug)]
pub(crate) struct ThreadTimer {
    timer: libc::timer_t,
}

impl ThreadTimer {
    /// A timer for the calling thread, which gets the signal unblocked;
    /// `None` without a [`wake_signal`].
    pub(crate) fn new() -> io::Result<Option<ThreadTimer>> {
        let Some(signal) = wake_signal() else {
            return Ok(None);
        };
        unblock_signal(signal)?;
        // SAFETY: an all-zero sigevent is valid (its padding included).
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        event.sigev_notify_thread_id = nix::unistd::gettid().as_raw();
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `timer` are valid for the call; the kernel
        // reads the first and writes the id of the new timer into the second.
        Errno::result(unsafe {
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer)
        })?;
        Ok(Some(ThreadTimer { timer }))
    }

    /// Ticks every `period`, from `period` on (zero: stops).
    pub(crate) fn set(&self, period: std::time::Duration) -> Result<(), Errno> {
        let spec = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let value = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: `self.timer` is a live timer of this process; `value` is
        // read during the call, and the old value is not asked for.
        Errno::result(unsafe { libc::timer_settime(self.timer, 0, &value, std::ptr::null_mut()) })
            .map(drop)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer is live and deleted once, here.
        unsafe {
            libc::timer_delete(self.timer);
        }
    }
}

/// A struct the kernel fills in for `ptrace(REQUEST, tid, size, &config)`:
/// see [`ptrace_get_config`].
///
/// # Safety
///
/// An implementor is a `repr(C)` struct of integers only (any bits make a
/// value), laid out as the kernel's struct for `REQUEST`; and `REQUEST` is
/// a request that takes the buffer's size in `addr`, writes at most that
/// many bytes at `data` and touches no other memory of the caller's.
pub(crate) unsafe trait PtraceConfig: Default {
    /// The request that fills it in.
    const REQUEST: libc::c_uint;
}

/// `struct ptrace_rseq_configuration`: where a thread registered its rseq
/// area, and the signature its abort handlers carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RseqConfig {
    /// The address of its `struct rseq` (0: none registered).
    pub(crate) rseq_abi_pointer: u64,
    /// Its size.
    pub(crate) rseq_abi_size: u32,
    /// The 32-bit value that must precede every abort handler.
    pub(crate) signature: u32,
    pub(crate) flags: u32,
    pad: u32,
}

// SAFETY: repr(C), integers only, as `struct ptrace_rseq_configuration`. The
// request writes at most `addr` bytes at `data`.
unsafe impl PtraceConfig for RseqConfig {
    /// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
    const REQUEST: libc::c_uint = 0x420f;
}

/// `struct ptrace_sud_config`: a thread's Syscall User Dispatch setting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SudConfig {
    /// `PR_SYS_DISPATCH_OFF` (0) or `PR_SYS_DISPATCH_ON` (1).
    pub(crate) mode: u64,
    /// The address of its selector byte.
    pub(crate) selector: u64,
    /// The start of the region whose system calls are never dispatched.
    pub(crate) offset: u64,
    /// That region's length.
    pub(crate) len: u64,
}

// The kernel's sizes (its Syscall User Dispatch request refuses any other).
const _: () =
    assert!(std::mem::size_of::<RseqConfig>() == 24 && std::mem::size_of::<SudConfig>() == 32);

// SAFETY: repr(C), integers only, as `struct ptrace_sud_config`. The request
// reads `addr` (it must be the size) and writes that many bytes at `data`.
unsafe impl PtraceConfig for SudConfig {
    /// `PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG` (Linux 6.2).
    const REQUEST: libc::c_uint = 0x4211;
}

/// `ptrace(T::REQUEST, tid, sizeof(T), &config)`: a setting of the stopped
/// tracee `tid`: its rseq registration ([`RseqConfig`]) or its Syscall
/// User Dispatch setting ([`SudConfig`]).
pub(crate) fn ptrace_get_config<T: PtraceConfig>(tid: libc::pid_t) -> Result<T, Errno> {
    let mut config = T::default();
    // SAFETY: `config` is a writable repr(C) struct of integers (see
    // `PtraceConfig`) of the size passed as `addr`, which bounds what the
    // kernel writes (and which it checks, for Syscall User Dispatch); it
    // outlives the call.
    let res = unsafe {
        libc::ptrace(
            T::REQUEST,
            tid,
            std::mem::size_of::<T>() as libc::c_long as *mut libc::c_void,
            &mut config as *mut T,
        )
    };
    Errno::result(res).map(|_| config)
}

/// `ptrace(PTRACE_DETACH, tid, 0, signal)`: lets a stopped tracee go,
/// delivering `signal` (any number, real-time ones too; 0 for none) when it
/// is detached from a signal-delivery-stop.
pub(crate) fn ptrace_detach(tid: libc::pid_t, signal: libc::c_int) -> Result<(), Errno> {
    // SAFETY: PTRACE_DETACH reads no memory: `addr` is ignored and `data` is
    // the signal number passed as an integer.
    let res = unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            signal as libc::c_long as *mut libc::c_void,
        )
    };
    Errno::result(res).map(drop)
}

/// `rt_tgsigqueueinfo(tgid, tid, signal, info)`: queues `signal` with the
/// given information for thread `tid` of process `tgid`. The kernel refuses
/// (EPERM) to let another process forge a `kill`/`tgkill` or kernel origin
/// (`si_code >= 0` or `SI_TKILL`).
pub(crate) fn rt_tgsigqueueinfo(
    tgid: libc::pid_t,
    tid: libc::pid_t,
    signal: libc::c_int,
    info: &libc::siginfo_t,
) -> Result<(), Errno> {
    // SAFETY: `info` points to a whole, initialised siginfo_t that the kernel
    // only reads during the call.
    let res = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            tgid,
            tid,
            signal,
            info as *const libc::siginfo_t,
        )
    };
    Errno::result(res).map(drop)
}

/// `kill(pid, signal)` with any signal number, real-time ones too.
pub(crate) fn kill_raw(pid: libc::pid_t, signal: libc::c_int) -> Result<(), Errno> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    Errno::result(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `tgkill(tgid, tid, signal)` with any signal number, real-time ones too.
pub(crate) fn tgkill_raw(
    tgid: libc::pid_t,
    tid: libc::pid_t,
    signal: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    Errno::result(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, signal) }).map(drop)
}

/// `NT_ARM_SYSTEM_CALL`: the register set holding the number of the system
/// call an arm64 tracee is in (-1 for none), which the kernel's restart
/// logic reads.
#[cfg(target_arch = "aarch64")]
const NT_ARM_SYSTEM_CALL: libc::c_int = 0x404;

/// `PTRACE_GETREGSET(NT_ARM_SYSTEM_CALL)`: the system call number the
/// stopped arm64 tracee `tid` is in, -1 for none.
#[cfg(target_arch = "aarch64")]
pub(crate) fn ptrace_get_syscall_nr(tid: libc::pid_t) -> Result<libc::c_int, Errno> {
    let mut nr: libc::c_int = -1;
    let mut iov = libc::iovec {
        iov_base: (&mut nr as *mut libc::c_int).cast(),
        iov_len: std::mem::size_of::<libc::c_int>(),
    };
    // SAFETY: `iov` describes `nr`, a writable c_int that outlives the call;
    // the kernel writes at most `iov_len` bytes there.
    let res = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            NT_ARM_SYSTEM_CALL as libc::c_long as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(res).map(|_| nr)
}

/// `PTRACE_SETREGSET(NT_ARM_SYSTEM_CALL)`: sets the system call number of
/// the stopped arm64 tracee `tid` (-1: not in a system call).
#[cfg(target_arch = "aarch64")]
pub(crate) fn ptrace_set_syscall_nr(tid: libc::pid_t, nr: libc::c_int) -> Result<(), Errno> {
    let mut nr = nr;
    let mut iov = libc::iovec {
        iov_base: (&mut nr as *mut libc::c_int).cast(),
        iov_len: std::mem::size_of::<libc::c_int>(),
    };
    // SAFETY: `iov` describes `nr`, a c_int that outlives the call and that
    // the kernel only reads.
    let res = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            NT_ARM_SYSTEM_CALL as libc::c_long as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(res).map(drop)
}

/// Ignores SIGTTIN and SIGTTOU in this whole process, as an interactive
/// shell does: then it may set the terminal's foreground process group and
/// write to the terminal from a background group without being stopped.
pub(crate) fn ignore_terminal_stops() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for stop in [Signal::SIGTTIN, Signal::SIGTTOU] {
        // SAFETY: SIG_IGN installs no handler code, so no Rust code runs in
        // signal context; nothing else in this program handles these two.
        unsafe { signal(stop, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// Makes the child spawned by `command` the terminal's foreground process
/// group before it runs: its process group (one of its own: see
/// `CommandExt::process_group`) takes the terminal on its standard input,
/// then SIGTTIN and SIGTTOU get their default action back (the parent
/// ignores them: see [`ignore_terminal_stops`], which lets a child in a
/// background group take the terminal at all).
pub(crate) fn take_terminal_in_child(command: &mut Command) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let hook = || -> io::Result<()> {
        // SAFETY: descriptor 0 stays open for the rest of this function: the
        // child closes nothing before exec.
        let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
        match nix::unistd::tcsetpgrp(stdin, nix::unistd::getpgrp()) {
            // A terminal that hung up has nobody to give: run all the same.
            Ok(()) | Err(Errno::ENOTTY | Errno::EIO | Errno::ENXIO) => {}
            Err(err) => return Err(err.into()),
        }
        for stop in [Signal::SIGTTIN, Signal::SIGTTOU] {
            // SAFETY: SIG_DFL installs no handler code; the child is single
            // threaded between fork and exec.
            unsafe { signal(stop, SigHandler::SigDfl) }?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and makes only
    // system calls (getpgrp, ioctl, rt_sigaction); it builds an error only on
    // failure, touching no lock or state shared with the parent's threads.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Has the C library's `malloc` serve every thread of this process from one
/// arena (glibc's `mallopt(M_ARENA_MAX, 1)`). Call it first thing in `main`,
/// before any thread starts; it returns whether the setting took effect
/// (`false` with another C library, where it does nothing).
///
/// glibc gives each thread that allocates an arena of its own, and an arena
/// keeps the memory it once used up to its trim threshold (128 KiB): a
/// controller, whose few threads sleep nearly all the time and would never
/// contend for one allocator lock, ends up holding 0.1 to 0.3 MB more after
/// serving a thousand connections, each on a thread of its own.
///
/// # Examples
///
/// ```
/// // First thing in `main`, before any thread starts:
/// let one = heli_grant::one_malloc_arena();
/// assert_eq!(one, cfg!(target_env = "gnu"));
/// ```
pub fn one_malloc_arena() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt takes two integers and changes one setting of
        // glibc's allocator under the allocator's own lock; it touches no
        // memory of ours.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process for a received `SCM_RIGHTS` message.
pub(crate) fn adopt_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` for this message only; nothing else
    // in this process knows its number, so this is its one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Clears `FD_CLOEXEC` on `fd`: a program the next child runs keeps it
/// (how the client passes pdb's sockets to the debugger it runs).
///
/// # Errors
///
/// When `fcntl` fails (not an open descriptor).
pub fn set_inheritable(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// What one [`reap_exited`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// No child (of those asked for) has ended yet.
    Nothing,
    /// A child ended, and how; it is reaped.
    Ended(u32, heli_core::ExitStatus),
    /// A child changed state without ending (not expected with
    /// `WEXITED` alone).
    Other,
}

/// One `waitid(2)` for an ended child, without waiting (`WNOHANG`): the
/// child of `pidfd`, or any child. Unlike nix's `waitid`, any signal that
/// killed it is reported, real-time ones too (nix's `WaitStatus` names
/// none of them: its `waitid` reaps the child, then fails with EINVAL and
/// the status is lost).
pub(crate) fn reap_exited(pidfd: Option<BorrowedFd<'_>>) -> nix::Result<Reaped> {
    let (idtype, id) = match pidfd {
        Some(pidfd) => (libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t),
        None => (libc::P_ALL, 0),
    };
    // SAFETY: an all-zero siginfo_t is valid (it is plain data), and
    // waitid only writes into the one it is given.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a live siginfo_t for waitid to fill in.
    let res = unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | libc::WNOHANG) };
    Errno::result(res)?;
    // SAFETY: waitid filled `info` in for a child (SIGCHLD's fields), or
    // left it zeroed when none had ended (si_pid 0).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(Reaped::Nothing);
    }
    let pid = pid.unsigned_abs();
    Ok(match info.si_code {
        libc::CLD_EXITED => Reaped::Ended(pid, heli_core::ExitStatus::Code(status)),
        libc::CLD_KILLED | libc::CLD_DUMPED => {
            Reaped::Ended(pid, heli_core::ExitStatus::Signal(status))
        }
        _ => Reaped::Other,
    })
}
