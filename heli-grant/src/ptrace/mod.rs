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
//! # Time: a tracer thread per injection, and a deadline
//!
//! A thread frozen by the cgroup freezer, or in uninterruptible sleep (a
//! parent waiting in `vfork`), does not reach the stop that
//! `PTRACE_INTERRUPT` asks for until it is thawed or wakes, and
//! `PTRACE_DETACH` works only on a stopped tracee. What does let it go is
//! the end of its tracer: the kernel ties a tracee to the tracer *thread*,
//! and when that thread exits it detaches its tracees (clearing the pending
//! interrupt), leaving them neither traced nor stopped, and alive unless
//! `PTRACE_O_EXITKILL` was set (measured on a frozen `sleep`: `TracerPid`
//! is 0 at once, and after the thaw it sleeps on). Hence:
//!
//! - each injection runs on a short-lived tracer thread of its own, which
//!   holds [`ChildWaits`](crate::ChildWaits) for the injection; the caller
//!   waits for its report until the [deadline](heli_core::Deadline)
//!   (`handoff.rs`);
//! - the tracer seizes *without* `PTRACE_O_EXITKILL`, and waits for stops
//!   with `waitpid(tid, WNOHANG | __WALL)`: at once, after two yields, then
//!   after pauses of 10 µs doubling up to 1 ms (its timer slack is 1 ns, so
//!   they last what they say), looking at the deadline between two looks;
//! - if the deadline passes, or is called off, before the first stop, the
//!   tracer thread reports `TimedOut` (saying whether the thread is frozen,
//!   from its cgroup, or in state `D`) and ends, which lets the thread go;
//!   the caller waits for that end before it returns, so the next
//!   injection finds the thread free;
//! - `PTRACE_O_EXITKILL` is set at the stop, just before the registers
//!   change: a controller that dies while the thread holds borrowed
//!   registers takes it along, rather than let it run on with them. From
//!   then on the tracer thread never gives up: it waits for the next stop
//!   (however long a freeze lasts) and puts the registers back. A caller
//!   whose deadline passes meanwhile gets `TimedOut` at once (its grace is
//!   50 ms); should the call then run, the tracer thread logs its result;
//! - a healthy injection waits no longer than before: the stops come
//!   within the first looks.
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
//! `inject.rs` runs the attempts ([`SyscallInjector`]); it asks `thread.rs`
//! which thread to seize; `tracee.rs` follows the recipe on it, asking
//! `insn.rs` which instruction to step over (step 3), `rseq.rs` and
//! `dispatch.rs` about step 2; they read `/proc` and memory through
//! `heli-proc`, and what differs per processor is in `arch/`.

#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_imports)
)]

mod arch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod dispatch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod handoff;
mod inject;
mod insn;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod rseq;
mod thread;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tracee;

pub use inject::{Injection, SyscallInjector};
