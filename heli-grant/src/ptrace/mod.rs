//! One system call run by a thread of another process, with ptrace.
//!
//! The recipe (measured, see the project's notes on Yama and ptrace):
//!
//! 1. `PTRACE_SEIZE` one thread (no SIGSTOP), `PTRACE_INTERRUPT`, and
//!    `waitpid(tid, __WALL)` for its stop;
//! 2. save its registers;
//! 3. pick a system call instruction: on x86_64 the one the thread is
//!    leaving (`rip - 2`) when it was in a system call, else one in the vDSO;
//! 4. set the registers for the call, with the "in a system call" mark
//!    cleared (`orig_rax = -1`), so the kernel's restart logic stays off;
//! 5. `PTRACE_SINGLESTEP` over the instruction and read the result;
//! 6. put the saved registers back exactly and `PTRACE_DETACH`: the kernel
//!    then restarts the interrupted call as if a signal without a handler
//!    had come, so sleeps end on time and blocked reads carry on.
//!
//! Never `PTRACE_SYSCALL` or `PTRACE_CONT`: they break those restarts.
//!
//! `inject.rs` follows the recipe ([`SyscallInjector`]); it asks
//! `thread.rs` which thread to seize and `insn.rs` which instruction to
//! step over (step 3); both read `/proc` through `heli-proc`, and what
//! differs per processor is in `arch/`.

#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_imports)
)]

mod arch;
mod inject;
mod insn;
mod thread;

pub use inject::{Injection, SyscallInjector};
