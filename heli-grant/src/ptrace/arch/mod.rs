//! What the injection needs to know of the processor, one file per
//! architecture, each giving the same names:
//!
//! - `INSN`, `INSN_ALIGN`: the system call instruction's bytes, and the
//!   alignment of an instruction;
//! - `EINTR_PRONE`: the calls that a ptrace stop ends with `EINTR`;
//! - `EXEC`: the calls that replace the program;
//! - `Regs`, `get`, `set`, `pc`, `set_pc`, `ret`, `restarting`, `foreign`,
//!   `current_insn`,
//!   `prepare`: a thread's registers, and how a call is set up in them
//!   (x86_64 and aarch64 only).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod unsupported;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(super) use aarch64::*;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(super) use unsupported::*;
#[cfg(target_arch = "x86_64")]
pub(super) use x86_64::*;
