//! One system call run by a thread of another process, with ptrace.
//!
//! The recipe (measured, see the project's notes on Yama and ptrace):
//!
//! 1. `PTRACE_SEIZE` one thread (no SIGSTOP), `PTRACE_INTERRUPT`, and wait
//!    for its stop;
//! 2. save its registers; refuse a thread with Syscall User Dispatch on
//!    (`dispatch.rs`), and if it was stopped inside an rseq critical
//!    section, make the saved instruction pointer its abort handler, as
//!    the kernel would have (`rseq.rs`);
//! 3. pick a system call instruction: on x86_64 the one the thread is
//!    leaving (`rip - 2`) when it was in a system call, else one in the vDSO;
//! 4. set `PTRACE_O_EXITKILL`, then the registers for the call, with the
//!    "in a system call" mark cleared (`orig_rax = -1`), so the kernel's
//!    restart logic stays off;
//! 5. `PTRACE_SINGLESTEP` over the instruction and read the result;
//! 6. put the saved registers back exactly, clear `PTRACE_O_EXITKILL`, and
//!    `PTRACE_DETACH`: the kernel then restarts the interrupted call as if a
//!    signal without a handler had come, so sleeps end on time and blocked
//!    reads carry on.
//!
//! Never `PTRACE_SYSCALL` or `PTRACE_CONT`: they break those restarts.
//!
//! # Time: tracer threads, and a deadline
//!
//! A thread frozen by the cgroup freezer (v1), or in uninterruptible sleep
//! (a parent waiting in `vfork`), does not reach the stop that
//! `PTRACE_INTERRUPT` asks for until it is thawed or wakes, and
//! `PTRACE_DETACH` works only on a stopped tracee. What does let it go is
//! the end of its tracer: the kernel ties a tracee to the tracer *thread*,
//! and when that thread exits it detaches its tracees (clearing the pending
//! interrupt), leaving them neither traced nor stopped, and alive unless
//! `PTRACE_O_EXITKILL` was set (measured on a frozen `sleep`: `TracerPid`
//! is 0 at once, and after the thaw it sleeps on). Hence:
//!
//! - each injection runs on a tracer thread, which holds
//!   [`ChildWaits`](crate::ChildWaits) for it; the caller waits for its
//!   report until the [deadline](heli_core::Deadline) (`handoff.rs`). A
//!   tracer thread serves one injection at a time; one that let its tracee
//!   go waits up to 5 s for the next injection, which then starts without a
//!   new thread (`tracer.rs`). Work and report go through pipes, whose
//!   wake-ups keep the two threads on one processor (`bell.rs`);
//! - the tracer seizes *without* `PTRACE_O_EXITKILL`, and waits for each
//!   stop blocked in `waitpid(tid, __WALL)`, woken by the stop itself, as
//!   a caller that waits for its own tracee would be. A timer of the
//!   tracer thread's own (`timer_create` with `SIGEV_THREAD_ID`) sends it
//!   a signal every millisecond while it waits; the signal's handler (ours,
//!   installed once on a real-time signal nobody in the process handles)
//!   does nothing, but the wait returns `EINTR`, and the tracer looks at
//!   the deadline and at the thread (still traced? frozen?). Were no signal
//!   free, waits would poll with `WNOHANG` instead: a polling tracer wakes
//!   on its own clock, after the stop, and on a busy machine may wait a
//!   whole time slice for a processor;
//! - if the deadline passes, or is called off, before the first stop, the
//!   tracer thread reports `TimedOut` (saying whether the thread is frozen,
//!   from its cgroup, or in state `D`) and ends, which lets the thread go;
//!   the caller waits until `TracerPid` shows it let go before it returns,
//!   so the next injection finds the thread free;
//! - `PTRACE_O_EXITKILL` is set at the stop, just before the registers
//!   change: a controller that dies while the thread holds borrowed
//!   registers takes it along, rather than let it run on with them. From
//!   then on the tracer thread never gives up on the thread: at any stop it
//!   can put the registers back, and once the deadline has passed (or the
//!   thread's cgroup is seen frozen: cgroup v2 freezes a thread where it
//!   still stops for ptrace, but does not step) it asks for one with
//!   another `PTRACE_INTERRUPT`; the call, if it had not run, is then not
//!   made, and if it was blocking (which injected calls must not do) it is
//!   interrupted. A thread that does not stop even then (frozen by cgroup
//!   v1 in the middle of the step) is waited for as long as it takes; its
//!   caller gets `TimedOut` 200 ms after its deadline, and should the call
//!   run after all, the tracer thread logs its result.
//!
//! The price is two hand-overs between threads. Measured on this
//! project's two-processor test machine while other builds ran (load 6 to
//! 11), side by side with the former injector (the calling thread as
//! tracer, blocking waits, no deadline), three runs of 1,000 injections of
//! `getpid`: medians of 114 to 152 µs against 77 to 92 µs into a sleeping
//! target, 163 to 295 against 92 to 134 into a busy shell loop, 158 to 217
//! against 111 to 150 into busy Python. In `cargo bench --bench grant`, a
//! whole grant's median moved by -3.6 to +0.06 ms (noise mostly). A first
//! version, which polled with `WNOHANG` and handed work over through a
//! channel, took 4 ms per injection into a busy target under that load.
//!
//! # Retries
//!
//! An attempt that ends with the call not made and the target untouched
//! starts over, on a thread chosen afresh, until the deadline: signals that
//! keep stopping the thread before it makes the call (after 32 stops the
//! registers are put back at the stop, and the thread let go with its
//! signals: it is never killed to recover); a chosen thread that exited, or
//! that another thread's `execve` ended (it then leaves without a death
//! reported: the tracer notices that `TracerPid` is no longer itself).
//! A thread that dies while it holds the call's registers is reported as
//! such, never retried: the call may have run, or killed it.
//!
//! `inject.rs` is the face ([`SyscallInjector`]); `job.rs` runs the
//! attempts on a tracer thread (`tracer.rs`), and hands the report to its
//! caller (`handoff.rs`); it
//! asks `thread.rs` which thread to seize; `tracee.rs` follows the recipe
//! on it, asking `insn.rs` which instruction to step over (step 3),
//! `rseq.rs` and `dispatch.rs` about step 2; they read `/proc` and memory
//! through `heli-proc`, and what differs per processor is in `arch/`. A
//! refusal that another way of making the call might avoid (or not) says
//! why inside its error (`refusal.rs`).

#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_imports)
)]

mod arch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod bell;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod dispatch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod handoff;
mod inject;
mod insn;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod job;
mod refusal;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod rseq;
mod thread;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tracee;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tracer;

pub use inject::{Injection, SyscallInjector};
pub(crate) use refusal::Refusal;
