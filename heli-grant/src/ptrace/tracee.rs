//! One seized thread: its stops, the call, and giving it back.

use std::io;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Deadline, ExitStatus, LogLimit};
use heli_proc::{Memory, Proc};
use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;

use crate::sys::{self, ThreadTimer};
use crate::wait::ChildWaitsGuard;

use super::handoff::{Handoff, Stage};
use super::refusal::Refusal;
use super::{arch, dispatch, insn, rseq};

/// `PTRACE_EVENT_STOP` in the high byte of a wait status: a stop after
/// `PTRACE_INTERRUPT`, or a group-stop, of a seized thread.
const PTRACE_EVENT_STOP: i32 = 128;

/// `si_code` of a SIGSYS from a seccomp filter's `SECCOMP_RET_TRAP`.
const SYS_SECCOMP: i32 = 1;

/// At most this many stops while stepping over the call (each one is a
/// signal that arrived meanwhile, or a group-stop); then the registers are
/// put back and the injection starts over.
const MAX_STOPS: usize = 32;

/// The longest pause between two looks for a stop.
const MAX_PAUSE: Duration = Duration::from_millis(1);

/// How often a blocked wait is interrupted, to look at the deadline and
/// at the thread.
const TICK: Duration = Duration::from_millis(1);

/// Where the injection stands with the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Seized and interrupted, no stop seen yet: should the tracer thread
    /// end now, the kernel would let the thread go as it was.
    Seized,
    /// Stopped, with its own registers.
    Stopped,
    /// Stopped or stepping, with registers set for the call: they must be
    /// put back before it goes.
    Borrowed,
    /// Given back, or gone.
    Released,
    /// Given up on before it stopped: the tracer thread must end, which
    /// lets it go.
    Abandoned,
}

/// What a wait reported about the traced thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The interrupt, or a group-stop: no signal to hold.
    Event,
    /// A signal-delivery-stop for this signal.
    Signal(i32),
}

/// How the thread left without being given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    /// The whole process exited.
    Process,
    /// This thread exited; the process lives on.
    Thread,
    /// It is no longer ours and no death was reported: another thread's
    /// `execve` ended it (the process runs a new program).
    Replaced,
}

/// How stepping over the call ended.
enum Step {
    /// The call returned this.
    Returned(i64),
    /// It has not run, and too many stops came: start over.
    Again(io::Error),
}

/// How one injection attempt ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The call was made and returned this value (or minus an errno).
    Returned(i64),
    /// The call was not made and the thread is given back untouched (or
    /// is gone while the process lives on): another attempt may succeed.
    Retry(io::Error),
    /// The injection failed.
    Failed(io::Error),
    /// The thread did not stop by the deadline: the tracer thread must end
    /// now (the kernel then lets the thread go, untouched).
    Abandoned(io::Error),
}

/// What the injection needs to know of the target while tracing it.
pub(super) struct Target<'a> {
    /// The process, opened once.
    pub(super) process: &'a Proc,
    /// Where its memory map and auxiliary vector are read when not from
    /// the process: the traced thread, when the main thread has exited.
    pub(super) code: Option<&'a Proc>,
    pub(super) deadline: &'a Deadline,
    pub(super) handoff: &'a dyn StageSink,
    /// The tracer thread's timer, whose ticks interrupt its blocking waits
    /// (`None`: no signal was free for it; waits then poll).
    pub(super) timer: Option<&'a ThreadTimer>,
}

/// Where a tracee reports its stage (a [`Handoff`]).
pub(super) trait StageSink {
    fn stage(&self, stage: Stage);
}

impl<R> StageSink for Handoff<R> {
    fn stage(&self, stage: Stage) {
        self.set_stage(stage);
    }
}

/// A thread we seized, and what we must give back.
pub(super) struct Tracee<'a, 'w> {
    target: Target<'a>,
    memory: Memory,
    pid: u32,
    tid: Pid,
    /// The tracer thread (this one): what `TracerPid` of the thread shows
    /// while we trace it.
    tracer: i32,
    waits: &'a mut ChildWaitsGuard<'w>,
    phase: Phase,
    /// Whether its registers were ever set for the call.
    borrowed: bool,
    /// Whether it is in a ptrace stop now (where requests work).
    stopped: bool,
    gone: Option<Gone>,
    saved: Option<arch::Regs>,
    /// Whether the last stop was a signal-delivery-stop, where a detach can
    /// deliver a signal.
    in_signal_stop: bool,
    held: Vec<libc::siginfo_t>,
    seized_at: Instant,
    /// Whether we asked it to stop again while it held our registers (it
    /// was frozen, or the deadline passed): the next stop ends the step.
    asked_to_stop: bool,
    /// The cgroup that froze it, once seen.
    frozen: Option<PathBuf>,
    /// Whether the single-step trap of the call is pending, to be dropped
    /// before the thread goes.
    step_trap: bool,
}

impl<'a, 'w> Tracee<'a, 'w> {
    /// Seizes thread `tid` of `target` (without `PTRACE_O_EXITKILL`: a
    /// tracer thread that ends before the registers change must leave it
    /// alive).
    pub(super) fn seize(
        target: Target<'a>,
        tid: Pid,
        waits: &'a mut ChildWaitsGuard<'w>,
    ) -> Result<Tracee<'a, 'w>, Errno> {
        ptrace::seize(tid, Options::empty())?;
        let pid = target.process.pid().get();
        debug!("seized thread {tid} of PID {pid}");
        Ok(Tracee {
            target,
            memory: Memory::new(heli_core::Pid::new(tid.as_raw() as u32).expect("a thread id")),
            pid,
            tid,
            tracer: nix::unistd::gettid().as_raw(),
            waits,
            phase: Phase::Seized,
            borrowed: false,
            stopped: false,
            gone: None,
            saved: None,
            in_signal_stop: false,
            held: Vec::new(),
            seized_at: Instant::now(),
            asked_to_stop: false,
            frozen: None,
            step_trap: false,
        })
    }

    /// Gives the thread up, just seized, before anything was asked of it:
    /// the tracer thread must end, which lets it go as it was (it never
    /// stopped).
    pub(super) fn abandon(mut self, err: io::Error) -> Outcome {
        debug_assert_eq!(self.phase, Phase::Seized);
        self.phase = Phase::Abandoned;
        Outcome::Abandoned(err)
    }

    /// The whole injection: the call, then the thread given back; and the
    /// signals held meanwhile and delivered after it.
    pub(super) fn run(mut self, nr: libc::c_long, args: &[u64; 6]) -> (Outcome, Vec<i32>) {
        let step = self.call(nr, args);
        if self.phase == Phase::Abandoned {
            let err = step.err().unwrap_or_else(|| io::Error::other("abandoned"));
            return (Outcome::Abandoned(err), Vec::new());
        }
        let released = self.release();
        if self.phase == Phase::Abandoned {
            let err = released
                .err()
                .unwrap_or_else(|| io::Error::other("abandoned"));
            return (Outcome::Abandoned(err), Vec::new());
        }
        let (redelivered, release_err) = match released {
            Ok(redelivered) => (redelivered, None),
            Err(err) => (Vec::new(), Some(err)),
        };
        // Whatever failed first, its death is the story.
        let outcome = match (self.gone, step) {
            (Some(Gone::Thread | Gone::Replaced), Err(err)) if !self.borrowed => {
                Outcome::Retry(err)
            }
            (Some(_), Err(err)) => Outcome::Failed(err),
            (Some(gone), Ok(_)) => Outcome::Failed(
                release_err.unwrap_or_else(|| io::Error::other(format!("{gone:?}"))),
            ),
            (None, Err(err)) => Outcome::Failed(err),
            (None, Ok(_)) if release_err.is_some() => {
                Outcome::Failed(release_err.expect("checked"))
            }
            (None, Ok(Step::Returned(ret))) => Outcome::Returned(ret),
            (None, Ok(Step::Again(err))) => Outcome::Retry(err),
        };
        (outcome, redelivered)
    }

    /// Steps 1 to 5 of the recipe; [`release`](Self::release) then gives
    /// the thread back, whatever happened.
    fn call(&mut self, nr: libc::c_long, args: &[u64; 6]) -> io::Result<Step> {
        ptrace::interrupt(self.tid).map_err(|e| self.fail(e, "PTRACE_INTERRUPT"))?;
        // A signal being delivered as we interrupted shows up first: hold it
        // (our interrupt's stop then comes later, while stepping).
        if let Stop::Signal(signal) = self.wait()? {
            let info = self.siginfo()?;
            self.hold(signal, info);
        }
        let mut saved = arch::get(self.tid).map_err(|e| self.fail(e, "reading the registers"))?;
        if let Some(what) = arch::foreign(&saved) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "thread {} of PID {} is {what}: cannot inject into it",
                    self.tid, self.pid
                ),
            ));
        }
        dispatch::refuse_if_on(self.tid, self.pid)?;
        rseq::abort_critical_section(self.tid, self.pid, &self.memory, &mut saved)?;
        self.saved = Some(saved);
        let code = self.target.code.unwrap_or(self.target.process);
        let insn = insn::syscall_insn(code, &self.memory, &saved)?;
        let regs = arch::prepare(&saved, insn, nr, args);
        // Should this process die while the thread holds our registers, the
        // thread dies too, rather than run on with them.
        ptrace::setoptions(self.tid, Options::PTRACE_O_EXITKILL)
            .map_err(|e| self.fail(e, "PTRACE_SETOPTIONS"))?;
        self.phase = Phase::Borrowed;
        self.borrowed = true;
        self.target.handoff.stage(Stage::Borrowed {
            tid: heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id"),
        });
        arch::set(self.tid, &regs).map_err(|e| self.fail(e, "setting the registers"))?;
        self.step()?;
        let after = insn + arch::INSN.len() as u64;
        let mut refused_by = None;
        let mut stops = 0;
        loop {
            let stop = self.wait()?;
            stops += 1;
            if let Stop::Signal(signal) = stop {
                let info = self.siginfo()?;
                let from_kernel = info.si_code > 0;
                if signal == libc::SIGTRAP && from_kernel {
                    let regs =
                        arch::get(self.tid).map_err(|e| self.fail(e, "reading the registers"))?;
                    let pc = arch::pc(&regs);
                    if pc == after {
                        return match refused_by {
                            Some((why, by, did)) => Err(Refusal::error(
                                why,
                                io::ErrorKind::PermissionDenied,
                                format!(
                                    "{by} of PID {} {did} the injected system call {nr} (its \
                                     SIGSYS was suppressed): the call was not made",
                                    self.pid
                                ),
                            )),
                            None => Ok(Step::Returned(arch::ret(&regs))),
                        };
                    }
                    if pc != insn {
                        return Err(io::Error::other(format!(
                            "unexpected SIGTRAP at {pc:#x} in thread {} of PID {} while \
                             stepping over {insn:#x}",
                            self.tid, self.pid
                        )));
                    }
                    // The target's own trap, pending from before: hold it.
                    self.hold(signal, info);
                } else if signal == libc::SIGSYS && info.si_code == SYS_SECCOMP {
                    // Our call's SIGSYS: suppress it, and step on to the trap
                    // that ends the step.
                    refused_by = Some((Refusal::Seccomp, "a seccomp filter", "trapped"));
                } else if signal == libc::SIGSYS
                    && info.si_code == dispatch::SYS_USER_DISPATCH
                    // SAFETY: a SIGSYS from the kernel holds the _sigsys
                    // member, whose call address lies where si_addr does.
                    && unsafe { info.si_addr() } as u64 == after
                {
                    // Dispatched to the program's handler: drop it.
                    refused_by =
                        Some((Refusal::UserDispatch, "Syscall User Dispatch", "dispatched"));
                } else if from_kernel
                    && matches!(
                        signal,
                        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
                    )
                    // SAFETY: the kernel generated this fault signal (si_code
                    // > 0), so the siginfo holds the _sigfault member.
                    && unsafe { info.si_addr() } as u64 == insn
                {
                    return Err(io::Error::other(format!(
                        "the system call instruction at {insn:#x} in PID {} faulted (signal \
                         {signal}, suppressed)",
                        self.pid
                    )));
                } else {
                    self.hold(signal, info);
                }
            }
            // At a stop the registers can always be put back: give up the
            // step there when signals keep coming, the thread is frozen, or
            // time is up.
            if stops >= MAX_STOPS || self.asked_to_stop || self.target.deadline.expired() {
                return self.interrupted(nr, insn, stops);
            }
            self.step()?;
        }
    }

    /// At a stop, after `stops` of them (too many, the thread frozen, or
    /// the deadline passed): whether the call ran after all, or must be
    /// tried again.
    fn interrupted(&mut self, nr: libc::c_long, insn: u64, stops: usize) -> io::Result<Step> {
        let regs = arch::get(self.tid).map_err(|e| self.fail(e, "reading the registers"))?;
        let pc = arch::pc(&regs);
        if pc == insn + arch::INSN.len() as u64 {
            // The step's own trap is pending (this stop came first): it
            // must be dropped before the thread goes.
            self.step_trap = self.step_trap_pending()?;
            if arch::restarting(&regs) {
                // Our stop interrupted the call itself: it blocks.
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the system call {nr} injected into thread {} of PID {} had not \
                         returned by the deadline: it was interrupted, and the thread given \
                         back",
                        self.tid, self.pid
                    ),
                ));
            }
            return Ok(Step::Returned(arch::ret(&regs)));
        }
        if pc != insn {
            return Err(io::Error::other(format!(
                "thread {} of PID {} is at {pc:#x}, neither before nor after the system call \
                 instruction at {insn:#x}, after {stops} stops",
                self.tid, self.pid
            )));
        }
        let (tid, pid) = (self.tid, self.pid);
        let why = if let Some(cgroup) = &self.frozen {
            format!(
                "thread {tid} of PID {pid} is frozen by the cgroup freezer ({}): it stopped, \
                 but cannot run the injected call",
                cgroup.display()
            )
        } else if stops >= MAX_STOPS {
            format!(
                "signals kept arriving at thread {tid} of PID {pid} ({stops} stops) before it \
                 could make the injected call"
            )
        } else {
            format!(
                "thread {tid} of PID {pid} had not made the injected call by the deadline \
                 ({stops} stops, {} signals held meanwhile)",
                self.held.len()
            )
        };
        Ok(Step::Again(io::Error::other(format!(
            "{why}: it was given back untouched"
        ))))
    }

    /// Whether the single-step `SIGTRAP` of the system call instruction is
    /// pending (it ran, or was interrupted, and this stop came first).
    fn step_trap_pending(&self) -> io::Result<bool> {
        let tid = heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id");
        let trap = 1u64 << (libc::SIGTRAP - 1);
        Ok(self
            .target
            .process
            .thread_status(tid)?
            .is_some_and(|status| status.pending & trap != 0))
    }

    /// With the registers back, and the single-step `SIGTRAP` of the call
    /// pending: resumes the thread into that `SIGTRAP`'s delivery stop
    /// (the kernel dequeues synchronous signals first, before any
    /// instruction runs), where it is dropped. Let go with it pending, the
    /// thread would die of it. A thread frozen meanwhile (cgroup v2 freezes
    /// it before it dequeues signals) is waited for: it holds its own
    /// registers.
    fn drop_step_trap(&mut self) -> io::Result<()> {
        let tid = heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id");
        self.target.handoff.stage(Stage::Draining { tid });
        loop {
            self.step()?;
            match self.wait()? {
                Stop::Signal(libc::SIGTRAP) => break,
                Stop::Signal(signal) => {
                    let info = self.siginfo()?;
                    self.hold(signal, info);
                }
                Stop::Event => {}
            }
        }
        self.step_trap = false;
        self.target.handoff.stage(Stage::Working);
        Ok(())
    }

    fn step(&mut self) -> io::Result<()> {
        // A failure leaves it where it was: `fail` looks for its death.
        ptrace::step(self.tid, None).map_err(|e| self.fail(e, "PTRACE_SINGLESTEP"))?;
        self.in_signal_stop = false;
        self.stopped = false;
        Ok(())
    }

    fn siginfo(&mut self) -> io::Result<libc::siginfo_t> {
        ptrace::getsiginfo(self.tid).map_err(|e| self.fail(e, "PTRACE_GETSIGINFO"))
    }

    /// Waits for the thread's next stop: blocked in `waitpid`, which the
    /// tracer thread's timer interrupts every [`TICK`] (or, without a timer,
    /// looking with `WNOHANG` after a pause that grows from none to
    /// [`MAX_PAUSE`]: see [`Pause`]); at each tick, the deadline and the
    /// thread's fate are looked at. Before the first stop
    /// it gives up at the deadline (the thread is then abandoned); once it
    /// holds our registers it waits as long as it takes. Its death, or its
    /// end by another thread's `execve`, is an error.
    fn wait(&mut self) -> io::Result<Stop> {
        let timer = self.target.timer;
        let mut pause = Pause::default();
        let mut armed = false;
        let result = loop {
            let found = match sys::waitpid_nohang(self.tid.as_raw()) {
                // Not yet: block until the stop, or the timer's next tick.
                Ok(None) => match timer {
                    Some(timer) => {
                        if !armed {
                            if let Err(err) = timer.set(TICK) {
                                break Err(io::Error::other(format!(
                                    "arming the tracer thread's timer: {err}"
                                )));
                            }
                            armed = true;
                        }
                        match sys::waitpid_interruptible(self.tid.as_raw()) {
                            Err(Errno::EINTR) => Ok(None),
                            found => found.map(Some),
                        }
                    }
                    None => Ok(None),
                },
                found => found,
            };
            let tick = match found {
                Ok(Some(status)) => break self.decode(status),
                Ok(None) => timer.is_some() || pause.wait(),
                // Not our tracee, nor our child: it exec'd (and is now the
                // main thread), or was ended by another thread's execve.
                Err(Errno::ECHILD) if self.took_over_main() => continue,
                Err(Errno::ECHILD) => break Err(self.replaced()),
                Err(err) => {
                    break Err(io::Error::other(format!(
                        "waiting for thread {} of PID {}: {err}",
                        self.tid, self.pid
                    )))
                }
            };
            if self.phase == Phase::Seized && self.target.deadline.expired() {
                self.phase = Phase::Abandoned;
                break Err(self.not_stopped());
            }
            if !tick {
                continue;
            }
            // A millisecond or more without a stop: look closer.
            if self.still_ours() {
                self.ask_to_stop_if_stuck();
                continue;
            }
            // A last look: a death may have come meanwhile.
            match sys::waitpid_nohang(self.tid.as_raw()) {
                Ok(Some(status)) => break self.decode(status),
                _ if self.took_over_main() => continue,
                _ => break Err(self.replaced()),
            }
        };
        if let (true, Some(timer)) = (armed, timer) {
            if let Err(err) = timer.set(Duration::ZERO) {
                debug!("disarming the tracer thread's timer: {err}");
            }
        }
        result
    }

    /// What a wait status says.
    fn decode(&mut self, status: libc::c_int) -> io::Result<Stop> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let exit = if libc::WIFEXITED(status) {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            } else {
                ExitStatus::Signal(libc::WTERMSIG(status))
            };
            self.stopped = false;
            self.phase = Phase::Released;
            if self.tid.as_raw() as u32 == self.pid {
                // The main thread is reported only with the whole process:
                // we reaped our child, and the reaper will find it here.
                self.waits.reaped(self.target.process.pid(), exit);
                self.gone = Some(Gone::Process);
                return Err(exited_during(self.pid, exit));
            }
            let lives = self.target.process.identity().ok().flatten().is_some();
            if !lives {
                self.gone = Some(Gone::Process);
                return Err(exited_during(self.pid, exit));
            }
            self.gone = Some(Gone::Thread);
            return Err(io::Error::other(format!(
                "thread {} of PID {} ended during the injection ({exit}); the process \
                 lives on",
                self.tid, self.pid
            )));
        }
        if libc::WIFSTOPPED(status) {
            self.stopped = true;
            if self.phase == Phase::Seized {
                self.phase = Phase::Stopped;
            }
            let signal = libc::WSTOPSIG(status);
            if status >> 16 == 0 {
                self.in_signal_stop = true;
                return Ok(Stop::Signal(signal));
            }
            if status >> 16 == PTRACE_EVENT_STOP {
                self.in_signal_stop = false;
                return Ok(Stop::Event);
            }
        }
        Err(io::Error::other(format!(
            "unexpected wait status {status:#x} of thread {} of PID {}",
            self.tid, self.pid
        )))
    }

    /// Whether the thread is still traced by this tracer thread.
    fn still_ours(&self) -> bool {
        let tid = heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id");
        match self.target.process.thread_status(tid) {
            Ok(Some(status)) => status.tracer.map(heli_core::Pid::get) == Some(self.tracer as u32),
            Ok(None) => false,
            // Cannot tell: keep waiting.
            Err(_) => true,
        }
    }

    /// While it holds our registers without reaching its next stop: when
    /// it is frozen (cgroup v2 freezes a thread in the signal code, where
    /// it stops for ptrace but cannot step), or once the deadline has
    /// passed, asks it to stop again (`PTRACE_INTERRUPT`), to put the
    /// registers back at that stop.
    fn ask_to_stop_if_stuck(&mut self) {
        if self.phase != Phase::Borrowed || self.asked_to_stop {
            return;
        }
        if self.frozen.is_none() {
            let tid = heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id");
            self.frozen = self.target.process.thread_frozen(tid).ok().flatten();
        }
        if self.frozen.is_some() || self.target.deadline.expired() {
            debug!(
                "thread {} of PID {} is stuck with our registers ({}): interrupting it",
                self.tid,
                self.pid,
                match &self.frozen {
                    Some(cgroup) => format!("frozen by {}", cgroup.display()),
                    None => "past the deadline".to_owned(),
                }
            );
            self.asked_to_stop = true;
            if let Err(err) = ptrace::interrupt(self.tid) {
                debug!("PTRACE_INTERRUPT on thread {}: {err}", self.tid);
            }
        }
    }

    /// Whether our thread called execve itself, and so became the main
    /// thread, with the process's id (which we then follow).
    fn took_over_main(&mut self) -> bool {
        let main = self.target.process.pid();
        if self.tid.as_raw() as u32 == main.get() {
            return false;
        }
        let ours = match self.target.process.thread_status(main) {
            Ok(Some(status)) => status.tracer.map(heli_core::Pid::get) == Some(self.tracer as u32),
            _ => false,
        };
        if ours {
            debug!(
                "thread {} of PID {main} called execve: it is the main thread now",
                self.tid
            );
            self.tid = Pid::from_raw(main.get() as i32);
            self.memory = Memory::new(main);
            self.target.code = None;
        }
        ours
    }

    /// The error for a thread that left us without a death reported.
    fn replaced(&mut self) -> io::Error {
        self.stopped = false;
        self.phase = Phase::Released;
        self.gone = Some(Gone::Replaced);
        io::Error::other(format!(
            "thread {} of PID {} left the injection without exiting: another thread of the \
             process called execve, which ended it (the process runs a new program)",
            self.tid, self.pid
        ))
    }

    /// The error for a thread that did not stop by the deadline, saying why
    /// as far as `/proc` tells.
    fn not_stopped(&self) -> io::Error {
        let waited = self.seized_at.elapsed().as_millis();
        let process = self.target.process;
        let tid = heli_core::Pid::new(self.tid.as_raw() as u32).expect("a thread id");
        let state = match process.thread_status(tid) {
            Ok(Some(status)) => status.state.code(),
            _ => '?',
        };
        let why = if self.target.deadline.is_cancelled() {
            format!("the injection was called off (state {state})")
        } else if let Ok(Some(cgroup)) = process.thread_frozen(tid) {
            format!(
                "it is frozen by the cgroup freezer ({}; state {state})",
                cgroup.display()
            )
        } else if state == 'D' {
            "it is in uninterruptible sleep (state D)".to_owned()
        } else {
            format!("state {state}")
        };
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "thread {} of PID {} did not stop for the injection within {waited} ms: {why}; \
                 it was let go untouched",
                self.tid, self.pid
            ),
        )
    }

    /// The error for a failed ptrace request. A tracee of ours refuses
    /// requests (`ESRCH`) only when it is not stopped: killed, or ended by
    /// another thread's `execve`; then this collects its death.
    fn fail(&mut self, err: Errno, what: &str) -> io::Error {
        let attached = matches!(self.phase, Phase::Seized | Phase::Stopped | Phase::Borrowed);
        if err == Errno::ESRCH && attached {
            self.stopped = false;
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
    /// signals. Never gives up on a thread that holds our registers.
    fn release(&mut self) -> io::Result<Vec<i32>> {
        match self.phase {
            Phase::Released | Phase::Abandoned => return Ok(Vec::new()),
            // Not stopped yet (the interrupt failed): only a stop, or the
            // end of this thread, lets it go.
            Phase::Seized => {
                if let Stop::Signal(signal) = self.wait()? {
                    let info = self.siginfo()?;
                    self.hold(signal, info);
                }
            }
            Phase::Stopped | Phase::Borrowed => {}
        }
        if self.phase == Phase::Borrowed {
            // Registers are touched only at a stop: wait for one first if
            // a failure left the thread stepping.
            while !self.stopped {
                if let Stop::Signal(signal) = self.wait()? {
                    let info = self.siginfo()?;
                    self.hold(signal, info);
                }
            }
            let saved = self.saved.expect("registers borrowed before being saved");
            arch::set(self.tid, &saved).map_err(|e| self.fail(e, "restoring the registers"))?;
            // Its own registers again: this process's death may spare it.
            if let Err(err) = ptrace::setoptions(self.tid, Options::empty()) {
                debug!("PTRACE_SETOPTIONS on thread {}: {err}", self.tid);
            }
            self.phase = Phase::Stopped;
            self.target.handoff.stage(Stage::Working);
        }
        if self.step_trap {
            self.drop_step_trap()?;
        }
        let mut held = std::mem::take(&mut self.held);
        let mut signal = 0;
        if self.in_signal_stop && !held.is_empty() {
            // SETSIGINFO keeps the sender when the detach delivers it.
            match ptrace::setsiginfo(self.tid, &held[0]) {
                Ok(()) => signal = held.remove(0).si_signo,
                Err(err) => warn!("PTRACE_SETSIGINFO on thread {}: {err}", self.tid),
            }
        }
        if let Err(err) = sys::ptrace_detach(self.tid.as_raw(), signal) {
            return Err(self.fail(err, "PTRACE_DETACH"));
        }
        self.phase = Phase::Released;
        self.stopped = false;
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

/// The pauses between two looks for a stop when waits poll (no signal was
/// free for the tracer thread's timer): none for the first [`SPIN`]
/// (a running or sleeping thread stops within microseconds, sooner than a
/// sleep of ours would end; yielding instead would hand the processor to
/// any busy task for a whole time slice), then 10 µs, doubling up to
/// [`FINE_PAUSE`] until [`FINE`] has passed (a thread that waits for a busy
/// processor stops within milliseconds: seen within 100 µs), then up to
/// [`MAX_PAUSE`]. This thread's timer slack is set to 1 ns, so that short
/// sleeps are as short as asked.
struct Pause {
    start: Instant,
    pause: Duration,
    next_check: Duration,
}

/// How long a wait looks for a stop without pausing.
const SPIN: Duration = Duration::from_micros(100);

/// How long the pauses stay short.
const FINE: Duration = Duration::from_millis(20);

/// The longest pause until [`FINE`] has passed.
const FINE_PAUSE: Duration = Duration::from_micros(100);

/// The shortest pause.
const MIN_PAUSE: Duration = Duration::from_micros(10);

impl Default for Pause {
    fn default() -> Self {
        Pause {
            start: Instant::now(),
            pause: Duration::ZERO,
            next_check: MAX_PAUSE,
        }
    }
}

impl Pause {
    /// Pauses; returns whether it is time for a slower check (every
    /// millisecond of waiting).
    fn wait(&mut self) -> bool {
        let elapsed = self.start.elapsed();
        if elapsed < SPIN {
            std::hint::spin_loop();
            return false;
        }
        let longest = if elapsed < FINE {
            FINE_PAUSE
        } else {
            MAX_PAUSE
        };
        self.pause = (self.pause * 2).clamp(MIN_PAUSE, longest);
        thread::sleep(self.pause);
        let elapsed = self.start.elapsed();
        if elapsed >= self.next_check {
            self.next_check = elapsed + MAX_PAUSE;
            return true;
        }
        false
    }
}

/// Warnings about signals sent again without their sender, per target:
/// whoever may signal the target can cause them, as often as it likes.
static SENT_AGAIN: LazyLock<Mutex<LogLimit<u32>>> = LazyLock::new(|| Mutex::new(LogLimit::new()));

/// Sends again a held signal that the detach could not deliver.
fn requeue(pid: u32, tid: i32, info: &libc::siginfo_t) {
    let signal = info.si_signo;
    let res = if info.si_code < 0 && info.si_code != libc::SI_TKILL {
        // A sigqueue, timer, mq or AIO signal: the kernel lets its info be
        // queued again as it was.
        sys::rt_tgsigqueueinfo(pid as i32, tid, signal, info)
    } else {
        let allowed = SENT_AGAIN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(pid, Instant::now());
        if let Some(note) = allowed {
            warn!(
                "signal {signal} for PID {pid} arrived during an injection, after another \
                 one; sending it again without its sender's identity{note}"
            );
        }
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

pub(super) fn exited_during(pid: u32, exit: ExitStatus) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("target PID {pid} exited during the grant ({exit})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_millisecond() {
        let mut pause = Pause::default();
        let start = Instant::now();
        while start.elapsed() < SPIN {
            assert!(!pause.wait());
        }
        // 10, 20, 40, 80, then 100 µs at a time for 20 ms, with a check
        // every millisecond.
        let mut checks = 0;
        let mut rounds = 0;
        while start.elapsed() < FINE {
            rounds += 1;
            if pause.wait() {
                checks += 1;
            }
        }
        assert_eq!(pause.pause, FINE_PAUSE);
        // Fewer on a busy machine, where sleeps last longer.
        assert!((1..=20).contains(&checks), "{checks} checks");
        assert!(rounds <= 200, "{rounds} rounds");
        // Then 200, 400, 800 µs, and 1 ms at a time, each followed by a
        // check.
        for _ in 0..3 {
            pause.wait();
        }
        for _ in 0..3 {
            assert!(pause.wait());
        }
        assert_eq!(pause.pause, MAX_PAUSE);
    }
}
