//! The injector: runs each injection on a tracer thread of its own, and
//! waits for it until the deadline.

use std::io;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use std::sync::Arc;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use std::thread;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use std::time::{Duration, Instant};

use heli_core::Deadline;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use heli_core::{Pid, Processes};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use heli_proc::{Proc, ProcFs, ThreadStatus};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use log::{debug, info, warn};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use nix::errno::Errno;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::scope::PtraceScope;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::sys::ThreadTimer;
use crate::wait::ChildWaits;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::wait::ChildWaitsGuard;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::handoff::{Handoff, Stage};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::thread::choose_thread;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::tracee::{Outcome, Target, Tracee};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::tracer::{Tracers, Work};

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
/// use heli_core::{Deadline, Supervisor};
/// use std::process::Command;
/// use std::time::Duration;
///
/// let mut command = Command::new("sleep");
/// command.arg("600");
/// let mut supervisor = ProcessSupervisor::new(command);
/// let pid = supervisor.spawn()?;
/// let injector = SyscallInjector::new(supervisor.child_waits());
/// # #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))] {
/// // The sleep carries on, to its end, and has told us its pid.
/// let deadline = Deadline::after(Duration::from_secs(1));
/// assert_eq!(injector.syscall(pid, libc::SYS_getpid, &[], &deadline)?, u64::from(pid));
/// # }
/// supervisor.kill()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SyscallInjector {
    waits: ChildWaits,
    allow_seccomp: bool,
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    tracers: Tracers<Job>,
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
            allow_seccomp: false,
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            tracers: Tracers::default(),
        }
    }

    /// Whether to inject into threads under a seccomp filter (default: no;
    /// see the type's documentation).
    pub fn allow_seccomp(mut self, allow: bool) -> Self {
        self.allow_seccomp = allow;
        self
    }

    /// Has a thread of process `pid` make system call `nr` with up to six
    /// `args` by `deadline`, and returns its value.
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
        pid: heli_core::Pid,
        nr: libc::c_long,
        args: &[u64],
        deadline: &Deadline,
    ) -> io::Result<u64> {
        self.inject(pid, nr, args, deadline)?.result()
    }

    /// Has a thread of process `pid` make system call `nr` with up to six
    /// `args` by `deadline`, and tells what happened; see
    /// [`syscall`](Self::syscall).
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
    /// - [`NotFound`](io::ErrorKind::NotFound): no such process, or it exited
    ///   during the injection (its status then went to the reaper);
    /// - [`PermissionDenied`](io::ErrorKind::PermissionDenied): not allowed
    ///   to ptrace it, or it runs under seccomp or Syscall User Dispatch;
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
        pid: heli_core::Pid,
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
            self.inject_native(pid, nr, all, deadline)
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (pid, nr, all, deadline, self.allow_seccomp, &self.waits);
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "injecting a system call is implemented for x86_64 and aarch64 only",
            ))
        }
    }

    /// Starts the tracer thread, and waits for its report until the
    /// deadline (and a short grace, for a tracer thread that is giving up).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn inject_native(
        &self,
        pid: heli_core::Pid,
        nr: libc::c_long,
        args: [u64; 6],
        deadline: &Deadline,
    ) -> io::Result<Injection> {
        let handoff = Arc::new(Handoff::new()?);
        let job = Job {
            waits: self.waits.clone(),
            allow_seccomp: self.allow_seccomp,
            pid,
            nr,
            args,
            deadline: deadline.clone(),
            handoff: handoff.clone(),
        };
        self.tracers.run(job)?;
        let mut report = None;
        while report.is_none() && !deadline.expired() {
            report = handoff.wait(deadline.remaining().min(CALLER_TICK));
        }
        let report = match report {
            Some(report) => report,
            // A tracer thread gives up within a pause of the deadline, unless
            // the thread holds its registers.
            None => match handoff
                .wait(GRACE)
                .ok_or(())
                .or_else(|()| handoff.give_up())
            {
                Ok(report) => report,
                Err(stage) => return Err(gave_up(pid, nr, stage, deadline)),
            },
        };
        if let Some(abandoned) = report.abandoned {
            // The kernel lets the thread go as its tracer thread ends.
            wait_until_let_go(pid, abandoned);
        }
        report.result
    }
}

/// How often a waiting caller looks at its deadline (it may be called off).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const CALLER_TICK: Duration = Duration::from_millis(10);

/// How long past the deadline a caller waits for a tracer thread that is
/// giving up.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const GRACE: Duration = Duration::from_millis(200);

/// One injection, as its tracer thread runs it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Job {
    waits: ChildWaits,
    allow_seccomp: bool,
    pid: heli_core::Pid,
    nr: libc::c_long,
    args: [u64; 6],
    deadline: Deadline,
    handoff: Arc<Handoff<Report>>,
}

/// What a tracer thread reports.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Report {
    result: io::Result<Injection>,
    /// The thread it gave up on before it stopped, and itself: the kernel
    /// lets the thread go once this tracer thread ends.
    abandoned: Option<Abandoned>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy, Debug)]
struct Abandoned {
    tid: Pid,
    tracer: u32,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Work for Job {
    /// Injects on the tracer thread, and hands the report over (or logs it,
    /// when the caller gave up meanwhile); the thread must end if it gave a
    /// thread up.
    fn run(self, timer: Option<&ThreadTimer>) -> bool {
        let report = self.inject(timer);
        let end = report.abandoned.is_some();
        if let Err(late) = self.handoff.finish(report) {
            match late.result {
                Ok(injection) => warn!(
                    "system call {} injected into thread {} of PID {} ran after its caller had \
                     given up at the deadline: it returned {}",
                    self.nr, injection.tid, self.pid, injection.ret
                ),
                Err(err) => info!(
                    "the injection into PID {} ended after its caller had given up: {err}",
                    self.pid
                ),
            }
        }
        end
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Job {
    fn inject(&self, timer: Option<&ThreadTimer>) -> Report {
        let mut abandoned = None;
        let result = self.attempts(timer, &mut abandoned);
        Report { result, abandoned }
    }

    /// Tries until the call is made, it fails, or the deadline passes.
    fn attempts(
        &self,
        timer: Option<&ThreadTimer>,
        abandoned: &mut Option<Abandoned>,
    ) -> io::Result<Injection> {
        let pid = self.pid.get();
        let process = Proc::open(self.pid)?.ok_or_else(|| exited_before(pid))?;
        // From here until the thread is let go, nobody else waits for our
        // children: the reaper would see its stops, and if the target dies
        // while traced, we reap it and hand its status on.
        let queued = Instant::now();
        let mut waits = self.waits.lock();
        if self.deadline.expired() {
            let why = if queued.elapsed() >= Duration::from_millis(1) {
                "the reaper or another injection held the right to wait for children"
            } else {
                "its thread got no processor in time"
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("could not start the injection into PID {pid} by the deadline: {why}"),
            ));
        }
        self.handoff.set_stage(Stage::Working);
        let mut retries = 0;
        loop {
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
            // A main thread that exited lingers as a zombie while other
            // threads run on: the process lives.
            let main_exited = status.state.is_gone();
            if main_exited && process.identity()?.is_none() {
                return Err(exited_before(pid));
            }
            let chosen = if status.threads == 1 {
                Some(process.pid())
            } else {
                choose_thread(&process, main_exited)?
            };
            let (tid, outcome) = match chosen {
                Some(tid) => {
                    let thread_status = if tid == process.pid() {
                        Some(status)
                    } else {
                        process.thread_status(tid)?
                    };
                    let attempt = Attempt {
                        process: &process,
                        tid,
                        main_exited,
                        timer,
                    };
                    let (outcome, redelivered) =
                        self.on_thread(attempt, thread_status, &mut waits)?;
                    if let Outcome::Returned(ret) = outcome {
                        return Ok(Injection {
                            tid,
                            ret,
                            redelivered,
                            retries,
                        });
                    }
                    (tid, outcome)
                }
                None => (
                    process.pid(),
                    Outcome::Retry(io::Error::other(format!(
                        "a thread of PID {pid} is in execve: waiting for the new program"
                    ))),
                ),
            };
            match outcome {
                Outcome::Returned(_) => unreachable!("returned above"),
                Outcome::Failed(err) => return Err(err),
                Outcome::Abandoned(err) => {
                    *abandoned = Some(Abandoned {
                        tid,
                        tracer: nix::unistd::gettid().as_raw() as u32,
                    });
                    return Err(err);
                }
                Outcome::Retry(err) => {
                    retries += 1;
                    if self.deadline.expired() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{err}; no time left to try again ({retries} attempts)"),
                        ));
                    }
                    debug!("injection into PID {pid}, attempt {retries}: {err}; trying again");
                    // Let the target handle what interrupted us.
                    let pause = RETRY_PAUSE * retries.min(20);
                    thread::sleep(pause.min(self.deadline.remaining()));
                }
            }
        }
    }

    /// One attempt on the thread chosen, whose status is `status` (`None`:
    /// it exited): checks it, seizes it, and runs the call.
    fn on_thread(
        &self,
        attempt: Attempt<'_>,
        status: Option<ThreadStatus>,
        waits: &mut ChildWaitsGuard<'_>,
    ) -> io::Result<(Outcome, Vec<i32>)> {
        let Attempt {
            process,
            tid,
            main_exited,
            timer,
        } = attempt;
        let pid = self.pid.get();
        if let Some(busy) = self.check(tid, status)? {
            return Ok((Outcome::Retry(busy), Vec::new()));
        }
        // With the main thread gone, its /proc entry shows no memory: read
        // the thread's own.
        let thread_proc = match main_exited {
            true => Some(Proc::open_existing(tid)?),
            false => None,
        };
        let target = Target {
            process,
            code: thread_proc.as_ref(),
            deadline: &self.deadline,
            handoff: &*self.handoff,
            timer,
        };
        let raw = nix::unistd::Pid::from_raw(tid.get() as i32);
        match Tracee::seize(target, raw, waits) {
            Ok(tracee) => Ok(tracee.run(self.nr, &self.args)),
            // That thread exited in between: choose again.
            Err(Errno::ESRCH) if tid != self.pid => Ok((
                Outcome::Retry(io::Error::other(format!(
                    "thread {tid} of PID {pid} exited before it was seized"
                ))),
                Vec::new(),
            )),
            Err(err) => Err(seize_error(process, tid, err)),
        }
    }

    /// Checks thread `tid`, whose status is `status` (`None`: it exited),
    /// before seizing it: an error when it cannot be
    /// injected into; `Ok(Some)` when it is still traced by a tracer thread
    /// of ours that is ending (try again).
    fn check(&self, tid: Pid, status: Option<ThreadStatus>) -> io::Result<Option<io::Error>> {
        let pid = self.pid.get();
        let Some(status) = status else {
            return Ok(Some(io::Error::other(format!(
                "thread {tid} of PID {pid} exited before it was seized"
            ))));
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
        if let Some(tracer) = status.tracer {
            if is_our_thread(tracer) {
                return Ok(Some(io::Error::other(format!(
                    "thread {tid} of PID {pid} is still traced by thread {tracer} of this \
                     process, which is ending"
                ))));
            }
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "thread {tid} of PID {pid} is already traced by PID {tracer} (a debugger?)"
                ),
            ));
        }
        Ok(None)
    }
}

/// The thread an attempt is on.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Attempt<'a> {
    process: &'a Proc,
    tid: Pid,
    /// Whether the process's main thread has exited (others run on).
    main_exited: bool,
    timer: Option<&'a ThreadTimer>,
}

/// The pause before another attempt, times the attempts so far (up to 20).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const RETRY_PAUSE: Duration = Duration::from_micros(100);

/// Whether `tid` is a thread of this process.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn is_our_thread(tid: Pid) -> bool {
    ProcFs
        .process(tid)
        .ok()
        .flatten()
        .is_some_and(|info| info.process == Pid::this())
}

/// Waits (up to 100 ms) until the kernel has let go thread `abandoned.tid`
/// of `pid`, whose tracer thread has just ended.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn wait_until_let_go(pid: Pid, abandoned: Abandoned) {
    let Ok(Some(process)) = Proc::open(pid) else {
        return;
    };
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        match process.thread_status(abandoned.tid) {
            Ok(Some(status)) if status.tracer.map(Pid::get) == Some(abandoned.tracer) => {
                thread::sleep(Duration::from_micros(100));
            }
            _ => return,
        }
    }
    warn!(
        "thread {} of PID {pid} is still traced by ended thread {}",
        abandoned.tid, abandoned.tracer
    );
}

/// The error for a caller that gives up while its tracer thread is at
/// `stage`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn gave_up(pid: Pid, nr: libc::c_long, stage: Stage, deadline: &Deadline) -> io::Error {
    let ended = if deadline.is_cancelled() {
        "was called off"
    } else {
        "reached its deadline"
    };
    let message = match stage {
        Stage::Queued => format!(
            "the injection into PID {pid} {ended} before it could start: the reaper or another \
             injection held the right to wait for children; the call was not made"
        ),
        Stage::Working => format!(
            "the injection into PID {pid} {ended} and is being given up; the call was not made"
        ),
        Stage::Borrowed { tid } | Stage::Draining { tid } => {
            let process = Proc::open(pid).ok().flatten();
            let state = process
                .as_ref()
                .and_then(|process| process.thread_status(tid).ok().flatten())
                .map_or('?', |status| status.state.code());
            let frozen = process
                .as_ref()
                .and_then(|process| process.thread_frozen(tid).ok().flatten());
            let why = match frozen {
                Some(cgroup) => format!(
                    "is frozen by the cgroup freezer ({}; state {state})",
                    cgroup.display()
                ),
                None => format!("stopped responding (state {state})"),
            };
            if let Stage::Draining { .. } = stage {
                format!(
                    "the injection into PID {pid} {ended} while system call {nr} blocked in \
                     thread {tid}: it was interrupted and the registers put back, but the \
                     thread {why}, and stays traced until it can drop the trap the call left"
                )
            } else {
                format!(
                    "the injection into PID {pid} {ended} while thread {tid} held the \
                     registers for system call {nr} and {why}: a thread of this process puts \
                     its registers back when it stops again, and the call may run then (its \
                     result will be logged)"
                )
            }
        }
    };
    io::Error::new(io::ErrorKind::TimedOut, message)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn seize_error(process: &Proc, tid: Pid, err: Errno) -> io::Error {
    let pid = process.pid().get();
    let gone = process.identity().map_or(true, |id| id.is_none());
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
fn exited_before(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("target PID {pid} is not running"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(10))
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
        let err = injector
            .inject(heli_core::Pid::new(1).unwrap(), 0, &[0; 7], &soon())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let err = injector
                .inject(
                    heli_core::Pid::new(i32::MAX as u32).unwrap(),
                    0,
                    &[],
                    &soon(),
                )
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn cannot_trace_own_process() {
        // The kernel refuses to let a process trace its own threads.
        let injector = SyscallInjector::new(ChildWaits::default());
        let err = injector
            .inject(heli_core::Pid::this(), libc::SYS_getpid, &[], &soon())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn an_expired_deadline_starts_nothing() {
        let injector = SyscallInjector::new(ChildWaits::default());
        let gone = Deadline::after(Duration::ZERO);
        let err = injector
            .inject(heli_core::Pid::this(), libc::SYS_getpid, &[], &gone)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
