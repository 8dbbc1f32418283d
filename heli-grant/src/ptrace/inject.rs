//! The injector: runs each injection on a tracer thread of its own, and
//! waits for it until the deadline.

use std::io;

use heli_core::{Deadline, ProcessId};

use crate::wait::ChildWaits;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::tracer::Tracers;

/// Makes one thread of another process run one system call, and reads what
/// it returned, with ptrace; the process carries on as if nothing happened.
///
/// Nothing is written to the target's memory and no code of ours runs in it:
/// the thread is stopped, its registers are pointed at a `syscall`
/// instruction already in its memory (the one it is leaving, or one in its
/// vDSO), it is single-stepped over it, and its registers are put back. A
/// thread interrupted in a sleep, a `read` or a `poll` restarts it as after
/// a signal without a handler: a sleep ends on time, a read returns the data
/// written later.
///
/// # Which process
///
/// The target is named by its [`ProcessId`] (pid and start time), and the
/// injector reaches that process or none: a pid names whichever process
/// has it now, and a process that is not the caller's child may exit and
/// be reaped by its own parent, and its pid reused, at any moment. The
/// injector opens the process's `/proc` directory and checks its identity
/// there; after it has seized a thread it checks again that the thread is
/// one of that process's (through the same directory, which a later
/// process with the pid does not share) and traced by it. Then the check
/// is final: a traced thread's id stays its own until its tracer has
/// waited for its death. A thread that turns out not to be one of that
/// process's is given up before it ever stops (the tracer thread ends,
/// which lets it go as it was), and the injection fails, with
/// [`NotFound`](io::ErrorKind::NotFound) saying the process is gone when
/// it has exited.
///
/// With [`own_tree_only`](Self::own_tree_only), the process is checked
/// there too, and given up the same way, unless it is still a descendant
/// of this process and runs as its user: the error
/// ([`PermissionDenied`](io::ErrorKind::PermissionDenied)) says
/// `PID N left the tree` or `PID N changed user`.
///
/// The caller must be allowed to ptrace the target: its parent under Yama
/// `ptrace_scope` 1, any process of the same user under 0, or a process with
/// `CAP_SYS_PTRACE`.
///
/// # Deadline
///
/// Every injection takes a [`Deadline`], and the call returns by it (a
/// millisecond or so later; 200 ms at most), whatever the target does: a
/// thread frozen by the cgroup freezer (`docker pause`) or in
/// uninterruptible sleep (a parent waiting in `vfork`) never reaches the
/// stop the injection waits for; it is then let go untouched, neither
/// traced nor stopped, and the injection fails with
/// [`TimedOut`](io::ErrorKind::TimedOut), saying which. The injection runs
/// on a tracer thread of the injector's own, which may outlive the call
/// when the thread froze in the middle of it; the module documentation
/// tells how.
///
/// # Which thread
///
/// Any thread may make a process-wide call such as `prctl(PR_SET_PTRACER)`.
/// The injector prefers a thread that is running, then one blocked in a call
/// the kernel restarts transparently, and takes one blocked in
/// `epoll_wait`, `recv`, `io_uring_enter` and the like (which a stop
/// interrupts with `EINTR` when they have a timeout) last.
/// [`Injection::tid`] tells which it used. A process whose main thread has
/// exited (`pthread_exit`) while others run on is alive: one of the others
/// makes the call.
///
/// # Signals
///
/// A signal that arrives during the injection is held, and delivered once
/// after the registers are back, with its original sender
/// (`PTRACE_SETSIGINFO` and `PTRACE_DETACH` with the signal). Should a
/// second one arrive in those microseconds it is queued again after the
/// detach; the kernel keeps the sender of `sigqueue` signals only, and the
/// injector logs a warning for others (a few per target every 10 s: anyone
/// who may signal the target could otherwise fill the log). A standard signal that arrives twice
/// is delivered once, as the kernel merges pending standard signals. When
/// signals keep coming faster than the thread can step over the call, the
/// injector puts the registers back at a stop (the call not made), lets
/// the thread go with its signals, and starts over until the deadline; the
/// target is never killed to recover.
///
/// # Restartable sequences and Syscall User Dispatch
///
/// A thread stopped inside an rseq critical section resumes at its abort
/// handler, as after any preemption (the injected call would otherwise make
/// the kernel forget the section). A thread with Syscall User Dispatch on
/// (as under Wine) is refused with
/// [`PermissionDenied`](io::ErrorKind::PermissionDenied): the call would go
/// to the program's own `SIGSYS` handler.
///
/// # Seccomp
///
/// A seccomp filter applies to the injected call too: it could fail it, or
/// kill the process. The injector refuses a thread under seccomp
/// (`Seccomp:` in its `/proc` status is not 0), unless
/// [`allow_seccomp`](Self::allow_seccomp) says the filter is known to allow
/// the call; then an error return is reported as such, a `SIGSYS` trap is
/// suppressed and reported as an error, and a kill is reported as the
/// target's (or the thread's) exit.
///
/// # The reaper
///
/// A tracer's `waitpid` sees its tracee's death, and for a child that means
/// reaping it. The tracer thread holds [`ChildWaits::lock`] during the whole
/// injection, so that a [`ProcessSupervisor`](crate::ProcessSupervisor)'s
/// reaper never waits while the thread is traced; if the target dies during
/// the injection, the injector records its exit status with
/// [`ChildWaitsGuard::reaped`](crate::ChildWaitsGuard::reaped) and returns
/// an error, and the reaper reports the status.
///
/// # Race condition: the controller dying mid-injection
///
/// If the injecting process dies while the thread runs with borrowed
/// registers, the thread would carry on from a vDSO instruction with a
/// clobbered state. The injector sets `PTRACE_O_EXITKILL` at the stop, just
/// before it changes the registers, and clears it once they are back,
/// trading that for the target's death (which a supervised target suffers
/// anyway when its controller dies: see
/// [`ProcessSupervisor`](crate::ProcessSupervisor)).
///
/// # Architectures
///
/// x86_64 (tested), aarch64 (written from the kernel source, not tested: an
/// interrupted call restarts from the beginning there, so a relative sleep
/// interrupted by an injection lasts longer); elsewhere every injection fails
/// with [`io::ErrorKind::Unsupported`]. 32-bit tasks on a 64-bit kernel are
/// refused.
///
/// # Examples
///
/// ```
/// use heli_grant::{ProcessSupervisor, SyscallInjector};
/// use heli_core::{Deadline, Processes, Supervisor};
/// use std::process::Command;
/// use std::time::Duration;
///
/// let mut command = Command::new("sleep");
/// command.arg("600");
/// let mut supervisor = ProcessSupervisor::new(command);
/// let pid = supervisor.spawn()?;
/// let sleep = supervisor.identity(pid)?.expect("it runs");
/// let injector = SyscallInjector::new(supervisor.child_waits());
/// # #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))] {
/// // The sleep carries on, to its end, and has told us its pid.
/// let deadline = Deadline::after(Duration::from_secs(1));
/// assert_eq!(injector.syscall(sleep, libc::SYS_getpid, &[], &deadline)?, u64::from(pid));
/// # }
/// supervisor.kill()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SyscallInjector {
    waits: ChildWaits,
    policy: Policy,
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    tracers: Tracers<super::job::Job>,
}

/// What an injector refuses beyond its rules for every target.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Policy {
    /// Inject into threads under seccomp too.
    pub(super) allow_seccomp: bool,
    /// Only into a descendant of this process that runs as its user,
    /// checked after the seize.
    pub(super) own_tree: bool,
}

/// What an injected system call did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Injection {
    /// The thread that made the call.
    pub tid: heli_core::Pid,
    /// What the call returned, as the kernel does: a value, or minus an
    /// errno (-4095..=-1).
    pub ret: i64,
    /// The signals (numbers) that arrived during the injection and were
    /// delivered after it, in order.
    pub redelivered: Vec<i32>,
    /// How many times the injection started over before the call was made
    /// (signals kept coming, or the thread chosen exited or was ended by
    /// another thread's `execve` before it stopped).
    pub retries: u32,
}

impl Injection {
    /// The call's result: its value, or its errno as an error.
    ///
    /// # Errors
    ///
    /// When the call returned an errno: [`io::Error::raw_os_error`] gives it.
    pub fn result(&self) -> io::Result<u64> {
        if (-4095..0).contains(&self.ret) {
            Err(io::Error::from_raw_os_error(-self.ret as i32))
        } else {
            Ok(self.ret as u64)
        }
    }
}

impl SyscallInjector {
    /// Whether this architecture has an implementation (x86_64, aarch64).
    pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

    /// An injector that shares `waits` with the reaper of its targets (see
    /// [`ProcessSupervisor::child_waits`](crate::ProcessSupervisor::child_waits));
    /// give it a fresh `ChildWaits::default()` for processes nobody reaps in
    /// this process.
    pub fn new(waits: ChildWaits) -> Self {
        SyscallInjector {
            waits,
            policy: Policy::default(),
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            tracers: Tracers::default(),
        }
    }

    /// Whether to inject into threads under a seccomp filter (default: no;
    /// see the type's documentation).
    pub fn allow_seccomp(mut self, allow: bool) -> Self {
        self.policy.allow_seccomp = allow;
        self
    }

    /// Whether to inject only into a process that is still, once a thread
    /// of it is seized, a descendant of this process running as its user
    /// (real and effective user ids this process's effective one); default:
    /// no. A granter acting for a client asks for it: a process may leave
    /// the tree, or change user, between the request and the injection.
    /// See [which process](Self#which-process).
    pub fn own_tree_only(mut self, only: bool) -> Self {
        self.policy.own_tree = only;
        self
    }

    /// Has a thread of process `process` make system call `nr` with up to
    /// six `args` by `deadline`, and returns its value.
    ///
    /// Only for calls that return at once (no sleeping, no blocking I/O) and
    /// do not change the thread's registers or signal state.
    ///
    /// # Errors
    ///
    /// As [`inject`](Self::inject); and when the call returned an errno,
    /// that errno ([`io::Error::raw_os_error`]).
    pub fn syscall(
        &self,
        process: ProcessId,
        nr: libc::c_long,
        args: &[u64],
        deadline: &Deadline,
    ) -> io::Result<u64> {
        self.inject(process, nr, args, deadline)?.result()
    }

    /// Has a thread of process `process` (and of no other process that
    /// has its pid; see [which process](Self#which-process)) make system
    /// call `nr` with up to six `args` by `deadline`, and tells what
    /// happened; see [`syscall`](Self::syscall).
    ///
    /// # Errors
    ///
    /// Only when the call could not be made (its own errno is in
    /// [`Injection::ret`]):
    /// - [`TimedOut`](io::ErrorKind::TimedOut): not done by the deadline, or
    ///   the deadline was called off. The message says why: the thread did
    ///   not stop (frozen by the cgroup freezer, or in uninterruptible
    ///   sleep), and was let go untouched; signals kept interrupting the
    ///   step; or the thread stopped responding in the middle of the call
    ///   (frozen then): it keeps the borrowed registers until it stops
    ///   again, when a thread of this process puts them back, and the call
    ///   may then run after all (its result is logged);
    /// - [`NotFound`](io::ErrorKind::NotFound): no such process (its pid is
    ///   free, or names a later process: it is gone), or it exited during
    ///   the injection (its status then went to the reaper);
    /// - [`PermissionDenied`](io::ErrorKind::PermissionDenied): not allowed
    ///   to ptrace it, or it runs under seccomp or Syscall User Dispatch,
    ///   or (with [`own_tree_only`](Self::own_tree_only)) it left this
    ///   process's tree or changed user;
    /// - [`ResourceBusy`](io::ErrorKind::ResourceBusy): another tracer (a
    ///   debugger) is attached to the chosen thread;
    /// - [`Unsupported`](io::ErrorKind::Unsupported): another architecture,
    ///   or a 32-bit task;
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput): more than six
    ///   arguments, or `pid` is a thread of another process;
    /// - others for failures of ptrace itself, and for a thread that died
    ///   (or was ended by another thread's `execve`) while it held the
    ///   call's registers, the process living on.
    pub fn inject(
        &self,
        process: ProcessId,
        nr: libc::c_long,
        args: &[u64],
        deadline: &Deadline,
    ) -> io::Result<Injection> {
        if args.len() > 6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a system call takes at most 6 arguments, not {}",
                    args.len()
                ),
            ));
        }
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            super::job::inject(
                &self.tracers,
                &self.waits,
                self.policy,
                process,
                nr,
                all,
                deadline,
            )
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (process, nr, all, deadline, self.policy, &self.waits);
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "injecting a system call is implemented for x86_64 and aarch64 only",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(10))
    }

    fn me() -> ProcessId {
        heli_core::Processes::identity(&heli_proc::ProcFs, heli_core::Pid::this())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn maps_errno_results() {
        let ok = Injection {
            tid: heli_core::Pid::new(1).unwrap(),
            ret: 5,
            redelivered: Vec::new(),
            retries: 0,
        };
        assert_eq!(ok.result().unwrap(), 5);
        let err = Injection { ret: -22, ..ok };
        assert_eq!(err.result().unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn refuses_bad_requests() {
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector.inject(me(), 0, &[0; 7], &soon()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let err = injector
                .inject(
                    ProcessId {
                        pid: heli_core::Pid::new(i32::MAX as u32).unwrap(),
                        start_time: 1,
                    },
                    0,
                    &[],
                    &soon(),
                )
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            // This process's pid, another start time: a process gone.
            let later = ProcessId {
                start_time: me().start_time + 1,
                ..me()
            };
            let err = injector
                .inject(later, libc::SYS_getpid, &[], &soon())
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            assert!(err.to_string().contains("is gone"), "{err}");
        }
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn cannot_trace_own_process() {
        // The kernel refuses to let a process trace its own threads.
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector
            .inject(me(), libc::SYS_getpid, &[], &soon())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn an_expired_deadline_starts_nothing() {
        let injector = SyscallInjector::new(ChildWaits::default());
        let gone = Deadline::after(Duration::ZERO);
        let err = injector
            .inject(me(), libc::SYS_getpid, &[], &gone)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
