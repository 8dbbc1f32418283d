//! The injector: seizes a thread, runs the call, gives the thread back.

use std::io;

use heli_core::ExitStatus;
use heli_proc::Proc;
use log::{debug, warn};
use nix::errno::Errno;
use nix::unistd::Pid;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::scope::PtraceScope;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::sys;
use crate::wait::{ChildWaits, ChildWaitsGuard};

use super::arch;
use super::insn;
use super::thread::choose_thread;

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
    pub tid: heli_core::Pid,
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
    pub fn syscall(&self, pid: heli_core::Pid, nr: libc::c_long, args: &[u64]) -> io::Result<u64> {
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
    pub fn inject(
        &self,
        pid: heli_core::Pid,
        nr: libc::c_long,
        args: &[u64],
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
    fn inject_native(
        &self,
        pid: heli_core::Pid,
        nr: libc::c_long,
        args: &[u64; 6],
    ) -> io::Result<Injection> {
        let process = Proc::open(pid)?.ok_or_else(|| exited_before(pid.get()))?;
        let pid = pid.get();
        let status = process.status()?.ok_or_else(|| exited_before(pid))?;
        if status.process.get() != pid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{pid} is a thread of process {}; pass a process ID",
                    status.process
                ),
            ));
        }
        if status.state.is_gone() {
            return Err(exited_before(pid));
        }
        // From here until the detach, nobody else waits for our children: the
        // reaper would see this thread's stops, and if the target dies while
        // traced, we reap it and hand its status on.
        let mut waits = self.waits.lock();
        let mut tries = 0;
        loop {
            let tid = if status.threads == 1 {
                process.pid()
            } else {
                choose_thread(&process)?
            };
            let status = if tid == process.pid() {
                status.clone()
            } else {
                match process.thread_status(tid)? {
                    Some(status) => status,
                    // That thread exited in between: choose again.
                    None if tries < 3 => {
                        tries += 1;
                        continue;
                    }
                    None => return Err(exited_before(pid)),
                }
            };
            let tid = tid.get();
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
            if let Some(tracer) = status.tracer {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "thread {tid} of PID {pid} is already traced by PID {tracer} (a debugger?)"
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
                Err(err) => return Err(seize_error(&process, tid, err)),
            }
            debug!("seized thread {tid} of PID {pid} to inject system call {nr}");
            let mut tracee = Tracee {
                process: &process,
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
                tid: heli_core::Pid::new(tid).expect("a thread id the kernel gave"),
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
    /// The process, opened once.
    process: &'a Proc,
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
        let insn = insn::syscall_insn(self.process, &saved)?;
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
                self.waits.reaped(self.process.pid(), exit);
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
fn seize_error(process: &Proc, tid: u32, err: Errno) -> io::Error {
    let pid = process.pid().get();
    let gone = process.status().map_or(true, |status| {
        status.is_none_or(|status| status.state.is_gone())
    });
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

fn exited_before(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("target PID {pid} is not running"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errno_results() {
        let ok = Injection {
            tid: heli_core::Pid::new(1).unwrap(),
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
        let err = injector
            .inject(heli_core::Pid::new(1).unwrap(), 0, &[0; 7])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = injector
            .inject(heli_core::Pid::new(i32::MAX as u32).unwrap(), 0, &[])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn cannot_trace_own_process() {
        // The kernel refuses to let a process trace its own threads.
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector
            .inject(heli_core::Pid::this(), libc::SYS_getpid, &[])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }
}
