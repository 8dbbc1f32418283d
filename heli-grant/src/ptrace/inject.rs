//! The injector: seizes a thread, runs the call, gives the thread back.

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use heli_core::ExitStatus;
use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::scope::PtraceScope;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::sys;
use crate::wait::{ChildWaits, ChildWaitsGuard};

use super::arch;

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
/// The caller must be allowed to ptrace the target: its parent under Yama
/// `ptrace_scope` 1, any process of the same user under 0, or a process with
/// `CAP_SYS_PTRACE`.
///
/// # Which thread
///
/// Any thread may make a process-wide call such as `prctl(PR_SET_PTRACER)`.
/// The injector prefers a thread that is running, then one blocked in a call
/// the kernel restarts transparently, and takes one blocked in
/// `epoll_wait`, `recv` and the like (which a stop interrupts with `EINTR`
/// when they have a timeout) last. [`Injection::tid`] tells which it used.
///
/// # Signals
///
/// A signal that arrives during the injection is held, and delivered once
/// after the registers are back, with its original sender
/// (`PTRACE_SETSIGINFO` and `PTRACE_DETACH` with the signal). Should a
/// second one arrive in those microseconds it is queued again after the
/// detach; the kernel keeps the sender of `sigqueue` signals only, and the
/// injector logs a warning for others. A standard signal that arrives twice
/// is delivered once, as the kernel merges pending standard signals.
///
/// # Seccomp
///
/// A seccomp filter applies to the injected call too: it could fail it, or
/// kill the process. The injector refuses a thread under seccomp
/// (`Seccomp:` in its `/proc` status is not 0), unless
/// [`allow_seccomp`](Self::allow_seccomp) says the filter is known to allow
/// the call; then an error return is reported as such, a `SIGSYS` trap is
/// suppressed and reported as an error, and a kill is reported as the
/// target's exit.
///
/// # The reaper
///
/// A tracer's `waitpid` sees its tracee's death, and for a child that means
/// reaping it. The injector holds [`ChildWaits::lock`] during the whole
/// injection, so that a [`ProcessSupervisor`](crate::ProcessSupervisor)'s
/// reaper never waits while the thread is traced; if the target dies during
/// the injection, the injector records its exit status with
/// [`ChildWaitsGuard::reaped`] and returns an error, and the reaper reports
/// the status.
///
/// # Race condition: the controller dying mid-injection
///
/// If the injecting process dies while the thread runs with borrowed
/// registers, the thread would carry on from a vDSO instruction with a
/// clobbered state. The injector seizes with `PTRACE_O_EXITKILL`, trading
/// that for the target's death (which a supervised target suffers anyway
/// when its controller dies: see [`ProcessSupervisor`](crate::ProcessSupervisor)).
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
/// use heli_core::Supervisor;
/// use std::process::Command;
///
/// let mut command = Command::new("sleep");
/// command.arg("600");
/// let mut supervisor = ProcessSupervisor::new(command);
/// let pid = supervisor.spawn()?;
/// let injector = SyscallInjector::new(supervisor.child_waits());
/// # #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))] {
/// // The sleep carries on, to its end, and has told us its pid.
/// assert_eq!(injector.syscall(pid, libc::SYS_getpid, &[])?, u64::from(pid));
/// # }
/// supervisor.kill()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SyscallInjector {
    waits: ChildWaits,
    allow_seccomp: bool,
}

/// What an injected system call did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Injection {
    /// The thread that made the call.
    pub tid: u32,
    /// What the call returned, as the kernel does: a value, or minus an
    /// errno (-4095..=-1).
    pub ret: i64,
    /// The signals (numbers) that arrived during the injection and were
    /// delivered after it, in order.
    pub redelivered: Vec<i32>,
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
            allow_seccomp: false,
        }
    }

    /// Whether to inject into threads under a seccomp filter (default: no;
    /// see the type's documentation).
    pub fn allow_seccomp(mut self, allow: bool) -> Self {
        self.allow_seccomp = allow;
        self
    }

    /// Has a thread of process `pid` make system call `nr` with up to six
    /// `args`, and returns its value.
    ///
    /// Only for calls that return at once (no sleeping, no blocking I/O) and
    /// do not change the thread's registers or signal state.
    ///
    /// # Errors
    ///
    /// As [`inject`](Self::inject); and when the call returned an errno,
    /// that errno ([`io::Error::raw_os_error`]).
    pub fn syscall(&self, pid: u32, nr: libc::c_long, args: &[u64]) -> io::Result<u64> {
        self.inject(pid, nr, args)?.result()
    }

    /// Has a thread of process `pid` make system call `nr` with up to six
    /// `args`, and tells what happened; see [`syscall`](Self::syscall).
    ///
    /// # Errors
    ///
    /// Only when the call could not be made (its own errno is in
    /// [`Injection::ret`]):
    /// - [`NotFound`](io::ErrorKind::NotFound): no such process, or it exited
    ///   during the injection (its status then went to the reaper);
    /// - [`PermissionDenied`](io::ErrorKind::PermissionDenied): not allowed
    ///   to ptrace it, or it runs under seccomp;
    /// - [`ResourceBusy`](io::ErrorKind::ResourceBusy): another tracer (a
    ///   debugger) is attached to the chosen thread;
    /// - [`Unsupported`](io::ErrorKind::Unsupported): another architecture,
    ///   or a 32-bit task;
    /// - [`InvalidInput`](io::ErrorKind::InvalidInput): more than six
    ///   arguments, or `pid` is a thread of another process;
    /// - others for failures of ptrace itself.
    pub fn inject(&self, pid: u32, nr: libc::c_long, args: &[u64]) -> io::Result<Injection> {
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
            self.inject_native(pid, nr, &all)
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (pid, nr, all, self.allow_seccomp);
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "injecting a system call is implemented for x86_64 and aarch64 only",
            ))
        }
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn inject_native(&self, pid: u32, nr: libc::c_long, args: &[u64; 6]) -> io::Result<Injection> {
        let status = TaskStatus::read(pid, None)?;
        if status.tgid != pid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{pid} is a thread of process {}; pass a process ID",
                    status.tgid
                ),
            ));
        }
        if status.exited() {
            return Err(exited_before(pid));
        }
        // From here until the detach, nobody else waits for our children: the
        // reaper would see this thread's stops, and if the target dies while
        // traced, we reap it and hand its status on.
        let mut waits = self.waits.lock();
        let mut tries = 0;
        loop {
            let tid = if status.threads == 1 {
                pid
            } else {
                choose_thread(pid)?
            };
            let status = if tid == pid {
                status.clone()
            } else {
                TaskStatus::read(pid, Some(tid))?
            };
            if status.seccomp != 0 && !self.allow_seccomp {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "thread {tid} of PID {pid} runs under seccomp (mode {}), whose filter \
                         applies to an injected system call too and could make it fail or kill \
                         the process: refusing to inject",
                        status.seccomp
                    ),
                ));
            }
            if status.tracer != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "thread {tid} of PID {pid} is already traced by PID {} (a debugger?)",
                        status.tracer
                    ),
                ));
            }
            let options = nix::sys::ptrace::Options::PTRACE_O_EXITKILL;
            match nix::sys::ptrace::seize(Pid::from_raw(tid as i32), options) {
                Ok(()) => {}
                // That thread exited in between: choose again.
                Err(Errno::ESRCH) if tid != pid && tries < 3 => {
                    tries += 1;
                    continue;
                }
                Err(err) => return Err(seize_error(pid, tid, err)),
            }
            debug!("seized thread {tid} of PID {pid} to inject system call {nr}");
            let mut tracee = Tracee {
                pid,
                tid: Pid::from_raw(tid as i32),
                waits: &mut waits,
                attached: true,
                died: None,
                saved: None,
                modified: false,
                in_signal_stop: false,
                held: Vec::new(),
            };
            let ret = tracee.call(nr, args);
            let redelivered = tracee.release();
            // Whatever failed first, its death is the story.
            if let Some(exit) = tracee.died {
                return Err(exited_during(pid, exit));
            }
            let ret = ret?;
            return Ok(Injection {
                tid,
                ret,
                redelivered: redelivered?,
            });
        }
    }
}

/// `PTRACE_EVENT_STOP` in the high byte of a wait status: a stop after
/// `PTRACE_INTERRUPT`, or a group-stop, of a seized thread.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const PTRACE_EVENT_STOP: i32 = 128;

/// `si_code` of a SIGSYS from a seccomp filter's `SECCOMP_RET_TRAP`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_SECCOMP: i32 = 1;

/// At most this many stops while stepping over the call (each one is a
/// signal that arrived meanwhile, or a group-stop).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const MAX_STOPS: usize = 64;

/// What a wait reported about the traced thread.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The interrupt, or a group-stop: no signal to hold.
    Event,
    /// A signal-delivery-stop for this signal.
    Signal(i32),
}

/// A thread we seized, and what we must give back.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Tracee<'a, 'w> {
    pid: u32,
    tid: Pid,
    waits: &'a mut ChildWaitsGuard<'w>,
    attached: bool,
    /// How it ended, if it died while traced.
    died: Option<ExitStatus>,
    saved: Option<arch::Regs>,
    modified: bool,
    /// Whether the last stop was a signal-delivery-stop, where a detach can
    /// deliver a signal.
    in_signal_stop: bool,
    held: Vec<libc::siginfo_t>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Tracee<'_, '_> {
    /// Steps 1 to 5 of the recipe; the caller then [releases](Self::release)
    /// the thread whatever happened.
    fn call(&mut self, nr: libc::c_long, args: &[u64; 6]) -> io::Result<i64> {
        nix::sys::ptrace::interrupt(self.tid).map_err(|e| self.fail(e, "PTRACE_INTERRUPT"))?;
        // A signal being delivered as we interrupted shows up first: hold it
        // (our interrupt's stop then comes later, while stepping).
        if let Stop::Signal(signal) = self.wait()? {
            let info = self.siginfo()?;
            self.hold(signal, info);
        }
        let saved = arch::get(self.tid).map_err(|e| self.fail(e, "reading the registers"))?;
        if let Some(what) = arch::foreign(&saved) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "thread {} of PID {} is {what}: cannot inject into it",
                    self.tid, self.pid
                ),
            ));
        }
        self.saved = Some(saved);
        let insn = self.syscall_insn(&saved)?;
        let regs = arch::prepare(&saved, insn, nr, args);
        self.modified = true;
        arch::set(self.tid, &regs).map_err(|e| self.fail(e, "setting the registers"))?;
        self.step()?;
        let mut trapped = false;
        for _ in 0..MAX_STOPS {
            let signal = match self.wait()? {
                // Our interrupt, after a signal-delivery-stop; or a group-stop.
                Stop::Event => {
                    self.step()?;
                    continue;
                }
                Stop::Signal(signal) => signal,
            };
            let info = self.siginfo()?;
            let from_kernel = info.si_code > 0;
            if signal == libc::SIGTRAP && from_kernel {
                let regs =
                    arch::get(self.tid).map_err(|e| self.fail(e, "reading the registers"))?;
                let pc = arch::pc(&regs);
                if pc == insn + arch::INSN.len() as u64 {
                    if trapped {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "a seccomp filter of PID {} trapped the injected system call \
                                 {nr} (its SIGSYS was suppressed)",
                                self.pid
                            ),
                        ));
                    }
                    return Ok(arch::ret(&regs));
                }
                if pc != insn {
                    return Err(io::Error::other(format!(
                        "unexpected SIGTRAP at {pc:#x} in thread {} of PID {} while stepping \
                         over {insn:#x}",
                        self.tid, self.pid
                    )));
                }
                // The target's own trap, pending from before: hold it.
            } else if signal == libc::SIGSYS && info.si_code == SYS_SECCOMP {
                // Our call's SIGSYS: suppress it, and step on to the trap that
                // ends the step (pending too: it would kill the target).
                trapped = true;
                self.step()?;
                continue;
            } else if from_kernel
                && matches!(
                    signal,
                    libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
                )
                // SAFETY: the kernel generated this fault signal (si_code > 0),
                // so the siginfo holds the _sigfault member.
                && unsafe { info.si_addr() } as u64 == insn
            {
                return Err(io::Error::other(format!(
                    "the system call instruction at {insn:#x} in PID {} faulted (signal \
                     {signal}, suppressed)",
                    self.pid
                )));
            }
            self.hold(signal, info);
            self.step()?;
        }
        Err(io::Error::other(format!(
            "more than {MAX_STOPS} stops while injecting into thread {} of PID {}",
            self.tid, self.pid
        )))
    }

    /// The address of a system call instruction the thread may execute.
    fn syscall_insn(&mut self, saved: &arch::Regs) -> io::Result<u64> {
        if let Some(addr) = arch::current_insn(saved) {
            if read_remote(self.pid, addr, arch::INSN.len())
                .ok()
                .as_deref()
                == Some(arch::INSN)
            {
                return Ok(addr);
            }
        }
        find_syscall_insn(self.pid, arch::pc(saved))
    }

    fn step(&mut self) -> io::Result<()> {
        self.in_signal_stop = false;
        nix::sys::ptrace::step(self.tid, None).map_err(|e| self.fail(e, "PTRACE_SINGLESTEP"))
    }

    fn siginfo(&mut self) -> io::Result<libc::siginfo_t> {
        nix::sys::ptrace::getsiginfo(self.tid).map_err(|e| self.fail(e, "PTRACE_GETSIGINFO"))
    }

    /// Waits for the thread's next stop; its death is an error, after its
    /// status was handed to the reaper.
    fn wait(&mut self) -> io::Result<Stop> {
        let status = sys::waitpid_all(self.tid.as_raw()).map_err(|err| {
            io::Error::other(format!(
                "waiting for thread {} of PID {}: {err}",
                self.tid, self.pid
            ))
        })?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.attached = false;
            let exit = if libc::WIFEXITED(status) {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            } else {
                ExitStatus::Signal(libc::WTERMSIG(status))
            };
            if self.tid.as_raw() as u32 == self.pid {
                // We reaped our child: the reaper will find it here.
                self.waits.reaped(self.pid, exit);
            }
            self.died = Some(exit);
            return Err(exited_during(self.pid, exit));
        }
        if libc::WIFSTOPPED(status) {
            let signal = libc::WSTOPSIG(status);
            if status >> 16 == 0 {
                self.in_signal_stop = true;
                return Ok(Stop::Signal(signal));
            }
            if status >> 16 == PTRACE_EVENT_STOP {
                return Ok(Stop::Event);
            }
        }
        Err(io::Error::other(format!(
            "unexpected wait status {status:#x} of thread {} of PID {}",
            self.tid, self.pid
        )))
    }

    /// The error for a failed ptrace request. A stopped tracee leaves its
    /// stop only when killed: then this collects its death.
    fn fail(&mut self, err: Errno, what: &str) -> io::Error {
        if err == Errno::ESRCH && self.attached {
            match self.wait() {
                Err(err) => return err,
                Ok(stop) => warn!(
                    "{what} failed with ESRCH, yet thread {} is in {stop:?}",
                    self.tid
                ),
            }
        }
        io::Error::other(format!(
            "{what} on thread {} of PID {}: {err}",
            self.tid, self.pid
        ))
    }

    /// Keeps a signal that arrived during the injection, for later.
    fn hold(&mut self, signal: i32, info: libc::siginfo_t) {
        // A standard signal is pending at most once: merge, as the kernel does.
        if signal < libc::SIGRTMIN() && self.held.iter().any(|held| held.si_signo == signal) {
            debug!(
                "signal {signal} for PID {} arrived twice during an injection",
                self.pid
            );
            return;
        }
        debug!(
            "holding signal {signal} for PID {} until the injection ends",
            self.pid
        );
        self.held.push(info);
    }

    /// Step 6: puts the registers back, detaches, and delivers the held
    /// signals.
    fn release(&mut self) -> io::Result<Vec<i32>> {
        if !self.attached {
            return Ok(Vec::new());
        }
        if self.modified {
            let saved = self.saved.expect("registers modified before being saved");
            if let Err(err) = arch::set(self.tid, &saved) {
                let err = self.fail(err, "restoring the registers");
                if self.attached {
                    // Never let it run on with borrowed registers.
                    warn!("killing PID {}: {err}", self.pid);
                    let _ = sys::kill_raw(self.pid as i32, libc::SIGKILL);
                    let _ = self.wait();
                }
                return Err(err);
            }
            self.modified = false;
        }
        let mut held = std::mem::take(&mut self.held);
        let mut signal = 0;
        if self.in_signal_stop && !held.is_empty() {
            // SETSIGINFO keeps the sender when the detach delivers it.
            match nix::sys::ptrace::setsiginfo(self.tid, &held[0]) {
                Ok(()) => signal = held.remove(0).si_signo,
                Err(err) => warn!("PTRACE_SETSIGINFO on thread {}: {err}", self.tid),
            }
        }
        if let Err(err) = sys::ptrace_detach(self.tid.as_raw(), signal) {
            return Err(self.fail(err, "PTRACE_DETACH"));
        }
        self.attached = false;
        let mut delivered = Vec::new();
        if signal != 0 {
            delivered.push(signal);
        }
        for info in &held {
            requeue(self.pid, self.tid.as_raw(), info);
            delivered.push(info.si_signo);
        }
        Ok(delivered)
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Drop for Tracee<'_, '_> {
    fn drop(&mut self) {
        if self.attached {
            let _ = self.release();
        }
    }
}

/// Sends again a held signal that the detach could not deliver.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn requeue(pid: u32, tid: i32, info: &libc::siginfo_t) {
    let signal = info.si_signo;
    let res = if info.si_code < 0 && info.si_code != libc::SI_TKILL {
        // A sigqueue, timer, mq or AIO signal: the kernel lets its info be
        // queued again as it was.
        sys::rt_tgsigqueueinfo(pid as i32, tid, signal, info)
    } else {
        warn!(
            "signal {signal} for PID {pid} arrived during an injection, after another one; \
             sending it again without its sender's identity"
        );
        if info.si_code == libc::SI_TKILL {
            sys::tgkill_raw(pid as i32, tid, signal)
        } else {
            sys::kill_raw(pid as i32, signal)
        }
    };
    if let Err(err) = res {
        warn!("cannot deliver signal {signal} to PID {pid} again: {err}");
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn seize_error(pid: u32, tid: u32, err: Errno) -> io::Error {
    let gone = TaskStatus::read(pid, None).map_or(true, |status| status.exited());
    if gone {
        return exited_before(pid);
    }
    let kind = match err {
        Errno::EPERM | Errno::EACCES => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    let scope = match PtraceScope::current() {
        Ok(scope) => format!("ptrace_scope {scope}: {}", scope.explain()),
        Err(err) => format!("ptrace_scope unknown: {err}"),
    };
    io::Error::new(
        kind,
        format!("cannot ptrace thread {tid} of PID {pid}: {err} ({scope})"),
    )
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn exited_during(pid: u32, exit: ExitStatus) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("target PID {pid} exited during the grant ({exit})"),
    )
}

/// An error reading `/proc/PID/...`: a process that is gone (or going) is
/// not found.
fn proc_error(pid: u32, path: &str, err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with PID {pid}"),
        )
    } else {
        io::Error::new(err.kind(), format!("{path}: {err}"))
    }
}

fn exited_before(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("target PID {pid} is not running"),
    )
}

/// What the injector reads in `/proc/PID[/task/TID]/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TaskStatus {
    state: char,
    tgid: u32,
    threads: u32,
    tracer: u32,
    seccomp: u8,
}

impl TaskStatus {
    fn read(pid: u32, tid: Option<u32>) -> io::Result<TaskStatus> {
        let path = match tid {
            Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
            None => format!("/proc/{pid}/status"),
        };
        let text = fs::read_to_string(&path).map_err(|err| proc_error(pid, &path, err))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> TaskStatus {
        let mut status = TaskStatus::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "State" => status.state = value.chars().next().unwrap_or('?'),
                "Tgid" => status.tgid = value.parse().unwrap_or(0),
                "Threads" => status.threads = value.parse().unwrap_or(0),
                "TracerPid" => status.tracer = value.parse().unwrap_or(0),
                "Seccomp" => status.seccomp = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        status
    }

    /// A zombie, or dead.
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The thread to inject into: the best by [`rank`], the main thread first
/// among equals.
fn choose_thread(pid: u32) -> io::Result<u32> {
    let path = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&path).map_err(|err| proc_error(pid, &path, err))?;
    let tids: Vec<u32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    if tids.len() <= 1 {
        return Ok(tids.first().copied().unwrap_or(pid));
    }
    let ranked = tids.iter().map(|&tid| {
        let rank = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
            .map_or(Rank::Unknown, |text| rank(&text));
        (rank, tid != pid, tid)
    });
    let (rank, _, tid) = ranked.min().expect("at least two threads");
    debug!("PID {pid}: injecting into thread {tid} ({rank:?})");
    Ok(tid)
}

/// How well a thread suits an injection, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// On a CPU, or ready to run: the stop interrupts nothing.
    Running,
    /// In user mode but not running (stopped, or faulting a page in).
    User,
    /// In a system call that the stop interrupts and the kernel restarts.
    Restartable,
    /// Its state could not be read.
    Unknown,
    /// In a call that returns `EINTR` when stopped (with a timeout).
    Eintr,
}

/// Ranks a thread by its `/proc/PID/task/TID/syscall`: `running`, `-1 sp
/// pc` (user mode), or `nr args... sp pc`.
fn rank(syscall: &str) -> Rank {
    let first = syscall.split_whitespace().next().unwrap_or("");
    if first == "running" {
        return Rank::Running;
    }
    match first.parse::<i64>() {
        Ok(-1) => Rank::User,
        Ok(nr) if arch::EINTR_PRONE.contains(&nr) => Rank::Eintr,
        Ok(_) => Rank::Restartable,
        Err(_) => Rank::Unknown,
    }
}

/// Where the system call instruction lies in the vDSO, once found (the
/// kernel maps the same vDSO in every native process); `usize::MAX` until
/// then.
static VDSO_INSN_OFFSET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The address of a system call instruction in the target's vDSO or, if
/// it has none, in the executable mapping that holds `pc`.
fn find_syscall_insn(pid: u32, pc: u64) -> io::Result<u64> {
    // Fast path: the vDSO's address from the auxiliary vector, and the
    // instruction's offset found in an earlier scan, checked.
    let offset = VDSO_INSN_OFFSET.load(Ordering::Relaxed);
    if offset != usize::MAX {
        if let Some(addr) = vdso_base(pid).map(|base| base + offset as u64) {
            if read_remote(pid, addr, arch::INSN.len()).ok().as_deref() == Some(arch::INSN) {
                return Ok(addr);
            }
        }
    }
    let path = format!("/proc/{pid}/maps");
    let maps = fs::read_to_string(&path).map_err(|err| proc_error(pid, &path, err))?;
    let mut candidates: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines() {
        let Some((start, end, exec, name)) = parse_map(line) else {
            continue;
        };
        if !exec {
            continue;
        }
        if name == "[vdso]" {
            candidates.insert(0, (start, end));
        } else if (start..end).contains(&pc) {
            candidates.push((start, end));
        }
    }
    for (index, (start, end)) in candidates.into_iter().enumerate() {
        // A mapping of the target's own code may be large: look in its first
        // megabytes only.
        let len = (end - start).min(4 << 20) as usize;
        let code = read_remote(pid, start, len)?;
        if let Some(offset) = find_insn(&code) {
            if index == 0 && vdso_base(pid) == Some(start) {
                VDSO_INSN_OFFSET.store(offset, Ordering::Relaxed);
            }
            return Ok(start + offset as u64);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no system call instruction found in PID {pid}'s vDSO"),
    ))
}

/// The vDSO's address in process `pid`: `AT_SYSINFO_EHDR` in its
/// auxiliary vector.
fn vdso_base(pid: u32) -> Option<u64> {
    let auxv = fs::read(format!("/proc/{pid}/auxv")).ok()?;
    parse_auxv(&auxv, AT_SYSINFO_EHDR).filter(|&base| base != 0)
}

/// The auxiliary vector's key for the vDSO's address (the same on every
/// architecture).
const AT_SYSINFO_EHDR: u64 = 33;

/// The value of `key` in an auxiliary vector (native-endian word pairs).
fn parse_auxv(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<u64>();
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("a word"));
        (word(&pair[..WORD]) == key).then(|| word(&pair[WORD..]))
    })
}

/// One line of `/proc/PID/maps`: start, end, executable, name.
fn parse_map(line: &str) -> Option<(u64, u64, bool, &str)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let name = fields.nth(3).unwrap_or("");
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
        perms.as_bytes().get(2) == Some(&b'x'),
        name,
    ))
}

/// The offset of the first system call instruction in `code` (which starts
/// on an instruction boundary for the architectures that need one).
fn find_insn(code: &[u8]) -> Option<usize> {
    (0..code.len().saturating_sub(arch::INSN.len() - 1))
        .step_by(arch::INSN_ALIGN)
        .find(|&offset| code[offset..].starts_with(arch::INSN))
}

/// Reads `len` bytes at `addr` in process `pid`.
fn read_remote(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec {
        base: addr as usize,
        len,
    }];
    match process_vm_readv(
        Pid::from_raw(pid as i32),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    ) {
        Ok(n) if n == len => return Ok(buf),
        Ok(_) | Err(_) => {}
    }
    // Special mappings may refuse process_vm_readv; /proc/PID/mem does not.
    let path = format!("/proc/{pid}/mem");
    fs::File::open(&path)
        .and_then(|mem| mem.read_exact_at(&mut buf, addr))
        .map_err(|err| proc_error(pid, &path, err))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tpython3\nState:\tS (sleeping)\nTgid:\t42\nPid:\t43\n\
                    TracerPid:\t7\nThreads:\t3\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let status = TaskStatus::parse(text);
        assert_eq!(
            status,
            TaskStatus {
                state: 'S',
                tgid: 42,
                threads: 3,
                tracer: 7,
                seccomp: 2
            }
        );
        assert!(!status.exited());
        assert!(TaskStatus::parse("State:\tZ (zombie)\n").exited());
    }

    #[test]
    fn ranks_threads() {
        assert_eq!(rank("running\n"), Rank::Running);
        assert_eq!(rank("-1 0x7ffc 0x5555\n"), Rank::User);
        let read = "0 0x3 0x7f 0x64 0x0 0x0 0x0 0x7ffc 0x7f12\n";
        assert_eq!(rank(read), Rank::Restartable);
        let epoll = format!(
            "{} 0x3 0x7f 0x64 0x0 0x0 0x0 0x7ffc 0x7f12\n",
            arch::EINTR_PRONE[0]
        );
        assert_eq!(rank(&epoll), Rank::Eintr);
        assert_eq!(rank(""), Rank::Unknown);
        assert!(Rank::Running < Rank::Restartable && Rank::Unknown < Rank::Eintr);
    }

    #[test]
    fn parses_maps() {
        let line = "7ffd5e9f0000-7ffd5e9f2000 r-xp 00000000 00:00 0                  [vdso]";
        assert_eq!(
            parse_map(line),
            Some((0x7ffd5e9f0000, 0x7ffd5e9f2000, true, "[vdso]"))
        );
        let line = "55d0c0a00000-55d0c0a01000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            parse_map(line),
            Some((0x55d0c0a00000, 0x55d0c0a01000, false, ""))
        );
    }

    #[test]
    fn finds_own_vdso() {
        let pairs: Vec<u8> = [(6u64, 4096u64), (33, 0x7fff_1234_0000), (0, 0)]
            .iter()
            .flat_map(|&(key, value)| [key.to_ne_bytes(), value.to_ne_bytes()])
            .flatten()
            .collect();
        assert_eq!(parse_auxv(&pairs, 33), Some(0x7fff_1234_0000));
        assert_eq!(parse_auxv(&pairs, 25), None);
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let vdso = maps
            .lines()
            .filter_map(parse_map)
            .find(|map| map.3 == "[vdso]");
        assert_eq!(vdso_base(std::process::id()), vdso.map(|map| map.0));
    }

    #[test]
    fn finds_instruction() {
        let insn = arch::INSN;
        let mut code = vec![0x90u8; 64];
        assert_eq!(find_insn(&code), None);
        code[40..40 + insn.len()].copy_from_slice(insn);
        assert_eq!(find_insn(&code), Some(40));
        assert_eq!(find_insn(insn), Some(0));
        assert_eq!(find_insn(&[]), None);
    }

    #[test]
    fn maps_errno_results() {
        let ok = Injection {
            tid: 1,
            ret: 5,
            redelivered: Vec::new(),
        };
        assert_eq!(ok.result().unwrap(), 5);
        let err = Injection { ret: -22, ..ok };
        assert_eq!(err.result().unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn refuses_bad_requests() {
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector.inject(1, 0, &[0; 7]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = injector.inject(i32::MAX as u32, 0, &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn cannot_trace_own_process() {
        // The kernel refuses to let a process trace its own threads.
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector
            .inject(std::process::id(), libc::SYS_getpid, &[])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }
}
