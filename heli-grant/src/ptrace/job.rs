//! One injection on a tracer thread: the job it runs (seize a thread,
//! wait for its stop, borrow its registers for one system call, put
//! everything back, let it go) and the caller's wait for its report until
//! the deadline. x86_64 and aarch64 only; [`SyscallInjector`] is the face.
//!
//! [`SyscallInjector`]: super::SyscallInjector

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Deadline, Pid, ProcessId, ProcessState, Processes};
use heli_proc::{Proc, ProcFs, ThreadStatus};
use log::{debug, info, warn};
use nix::errno::Errno;

use crate::scope::PtraceScope;
use crate::sys::ThreadTimer;
use crate::wait::{ChildWaits, ChildWaitsGuard};

use super::handoff::{Handoff, Stage};
use super::inject::{Injection, Policy};
use super::refusal::Refusal;
use super::thread::choose_thread;
use super::tracee::{Outcome, Target, Tracee};
use super::tracer::{Tracers, Work};

/// Starts the tracer thread, and waits for its report until the
/// deadline (and a short grace, for a tracer thread that is giving up).
pub(super) fn inject(
    tracers: &Tracers<Job>,
    waits: &ChildWaits,
    policy: Policy,
    process: ProcessId,
    nr: libc::c_long,
    args: [u64; 6],
    deadline: &Deadline,
) -> io::Result<Injection> {
    let pid = process.pid;
    let handoff = Arc::new(Handoff::new()?);
    let job = Job {
        waits: waits.clone(),
        policy,
        process,
        nr,
        args,
        deadline: deadline.clone(),
        handoff: handoff.clone(),
    };
    tracers.run(job)?;
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

/// How often a waiting caller looks at its deadline (it may be called off).
const CALLER_TICK: Duration = Duration::from_millis(10);

/// How long past the deadline a caller waits for a tracer thread that is
/// giving up.
const GRACE: Duration = Duration::from_millis(200);

/// One injection, as its tracer thread runs it.
pub(super) struct Job {
    waits: ChildWaits,
    policy: Policy,
    /// The process to inject into, and no other.
    process: ProcessId,
    nr: libc::c_long,
    args: [u64; 6],
    deadline: Deadline,
    handoff: Arc<Handoff<Report>>,
}

/// What a tracer thread reports.
struct Report {
    result: io::Result<Injection>,
    /// The thread it gave up on before it stopped, and itself: the kernel
    /// lets the thread go once this tracer thread ends.
    abandoned: Option<Abandoned>,
}

#[derive(Clone, Copy, Debug)]
struct Abandoned {
    tid: Pid,
    tracer: u32,
}

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
                    self.nr, injection.tid, self.process.pid, injection.ret
                ),
                Err(err) => info!(
                    "the injection into PID {} ended after its caller had given up: {err}",
                    self.process.pid
                ),
            }
        }
        end
    }
}

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
        let pid = self.process.pid.get();
        // Bound to the process asked for: all that is read through it is
        // that process's.
        let process = Proc::open_id(self.process)?.ok_or_else(|| gone(self.process))?;
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
        let pid = self.process.pid.get();
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
        // The threads as they were just before: see EPERM below.
        let threads = process.threads().ok();
        match Tracee::seize(target, raw, waits) {
            Ok(tracee) => match self.seized_ours(process, tid) {
                Ok(()) => Ok(tracee.run(self.nr, &self.args)),
                // Not touched: not even interrupted. Ending the tracer
                // thread lets it go as it was.
                Err(err) => Ok((tracee.abandon(err), Vec::new())),
            },
            // That thread exited in between: choose again.
            Err(Errno::ESRCH) if tid != self.process.pid => Ok((
                Outcome::Retry(io::Error::other(format!(
                    "thread {tid} of PID {pid} exited before it was seized"
                ))),
                Vec::new(),
            )),
            // A thread that is exiting cannot be seized (EPERM): so it is
            // while another thread's execve ends the others (the old main
            // thread keeps its pid until the new one takes it). The
            // threads changed meanwhile: choose again. A refusal that lasts
            // (Yama, another user) leaves them as they were.
            Err(Errno::EPERM) if exiting(process, tid, threads.as_deref()) => Ok((
                Outcome::Retry(io::Error::other(format!(
                    "thread {tid} of PID {pid} was exiting when seized (the process's threads \
                     changed: an execve?)"
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
        let pid = self.process.pid.get();
        let Some(status) = status else {
            return Ok(Some(io::Error::other(format!(
                "thread {tid} of PID {pid} exited before it was seized"
            ))));
        };
        if status.seccomp != 0 && !self.policy.allow_seccomp {
            return Err(Refusal::Seccomp.error(
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
            return Err(Refusal::Traced.error(
                io::ErrorKind::ResourceBusy,
                format!(
                    "thread {tid} of PID {pid} is already traced by PID {tracer} (a debugger?)"
                ),
            ));
        }
        Ok(None)
    }
}

impl Job {
    /// Whether thread `tid`, just seized, is one of the process's, and
    /// (with [`Policy::own_tree`]) the process still one of this process's
    /// tree and user: `Ok` when it is, else the error to give the thread up
    /// with, untouched.
    fn seized_ours(&self, process: &Proc, tid: Pid) -> io::Result<()> {
        seized_ours(self.process, process, tid)?;
        if self.policy.own_tree {
            crate::own_tree::check(self.process, process).inspect_err(|err| {
                warn!("{err}; thread {tid}, seized for it, is let go untouched");
            })?;
        }
        Ok(())
    }
}

/// The thread an attempt is on.
struct Attempt<'a> {
    process: &'a Proc,
    tid: Pid,
    /// Whether the process's main thread has exited (others run on).
    main_exited: bool,
    timer: Option<&'a ThreadTimer>,
}

/// Whether thread `tid`, just seized (and not yet interrupted), is one of
/// the threads of process `id`, opened as `process`, traced by this
/// thread: `Ok` when it is, else the error to give it up with.
///
/// Between the checks before the seize and the seize itself, the
/// process may have exited and been reaped by its parent (not us, for
/// a process of the tree that is not our child), and the thread's id
/// gone to another process. Asked now, through the process's own
/// `/proc` directory (which only finds its threads), the answer is
/// final: a thread we trace keeps its id until we have waited for its
/// death.
fn seized_ours(id: ProcessId, process: &Proc, tid: Pid) -> io::Result<()> {
    let me = nix::unistd::gettid().as_raw() as u32;
    let lives = matches!(process.identity(), Ok(Some(found)) if found == id);
    let traced = match process.thread_status(tid) {
        Ok(Some(status)) => status.tracer.map(Pid::get) == Some(me),
        _ => false,
    };
    if lives && traced {
        return Ok(());
    }
    let pid = id.pid;
    if !lives {
        warn!("PID {pid} ended as thread {tid} was seized for it: letting it go untouched");
        return Err(gone(id));
    }
    warn!(
        "thread {tid}, seized for PID {pid}, is not (or no longer) a thread of it traced by \
         us: letting it go untouched"
    );
    Err(io::Error::other(format!(
        "thread {tid} of PID {pid} ended, or its id went to another process, as it was \
         seized: it was let go untouched and nothing was injected"
    )))
}

/// The pause before another attempt, times the attempts so far (up to 20).
const RETRY_PAUSE: Duration = Duration::from_micros(100);

/// Whether `tid` is a thread of this process.
fn is_our_thread(tid: Pid) -> bool {
    ProcFs
        .process(tid)
        .ok()
        .flatten()
        .is_some_and(|info| info.process == Pid::this())
}

/// Waits (up to 100 ms) until the kernel has let go thread `abandoned.tid`
/// of `pid`, whose tracer thread has just ended.
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

/// Whether thread `tid` of `process` was exiting when a seize of it failed
/// with EPERM: it is a zombie now, or the process's threads are no longer
/// `before` (an execve ends every other thread).
fn exiting(process: &Proc, tid: Pid, before: Option<&[Pid]>) -> bool {
    let dead = matches!(
        process.thread_state(tid),
        Ok(None) | Ok(Some(ProcessState::Zombie | ProcessState::Dead))
    );
    dead || before.is_some_and(|before| process.threads().ok().as_deref() != Some(before))
}

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

/// The error for process `id` gone: its pid is free, or another process's.
fn gone(id: ProcessId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "PID {} (started at tick {}) is gone: it has exited, and its pid may name another \
             process now; nothing was injected",
            id.pid, id.start_time
        ),
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
    use nix::sys::ptrace;
    use std::process::{Child, Command};

    fn sleep() -> (Child, ProcessId, Proc) {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let id = ProcFs.identity(pid).unwrap().unwrap();
        (child, id, Proc::open_id(id).unwrap().unwrap())
    }

    #[test]
    fn a_thread_seized_is_checked_to_be_the_process_asked_for() {
        let (mut a, a_id, a_proc) = sleep();
        let (mut b, b_id, b_proc) = sleep();
        let raw = nix::unistd::Pid::from_raw(b_id.pid.get() as i32);
        // Not traced yet: not ours.
        assert!(seized_ours(b_id, &b_proc, b_id.pid).is_err());
        ptrace::seize(raw, ptrace::Options::empty()).unwrap();
        assert!(seized_ours(b_id, &b_proc, b_id.pid).is_ok());
        // B's thread, taken for one of A's: refused, A being alive.
        let err = seized_ours(a_id, &a_proc, b_id.pid).unwrap_err();
        assert!(err.to_string().contains("let go untouched"), "{err}");
        // A gone: refused as gone.
        let _ = a.kill();
        let _ = a.wait();
        let err = seized_ours(a_id, &a_proc, b_id.pid).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let _ = b.kill();
        let _ = b.wait();
    }
}
