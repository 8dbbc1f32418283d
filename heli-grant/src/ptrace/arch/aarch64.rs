//! arm64: `svc #0` (`d4000001`), number in `x8`, arguments in `x0`-`x5`,
//! result in `x0`; the kernel's "in a system call" mark is the
//! `NT_ARM_SYSTEM_CALL` register set. It prepares a restart (rewinding
//! `pc`, restoring `x0`) *before* the stop, so the injection always uses
//! another `svc` (the vDSO's, in `__kernel_rt_sigreturn`), and the
//! interrupted call re-runs from the start after the detach.

use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::sys;

#[derive(Clone, Copy)]
pub(crate) struct Regs {
    gp: libc::user_regs_struct,
    syscallno: libc::c_int,
}

pub(crate) const INSN: &[u8] = &[0x01, 0x00, 0x00, 0xd4];
pub(crate) const INSN_ALIGN: usize = 4;

/// Calls that a ptrace stop ends with `EINTR` (when they have a timeout,
/// for the socket ones), instead of restarting them.
pub(crate) const EINTR_PRONE: &[i64] = &[
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_io_getevents,
    292, // io_pgetevents
    libc::SYS_semtimedop,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_io_uring_enter,
];

/// The calls that replace the program (and end the other threads).
pub(crate) const EXEC: &[i64] = &[libc::SYS_execve, libc::SYS_execveat];

/// PSTATE's bit for an AArch32 task.
const PSR_MODE32_BIT: u64 = 0x10;

pub(crate) fn get(tid: Pid) -> nix::Result<Regs> {
    Ok(Regs {
        gp: ptrace::getregset::<ptrace::regset::NT_PRSTATUS>(tid)?,
        syscallno: sys::ptrace_get_syscall_nr(tid.as_raw())?,
    })
}

pub(crate) fn set(tid: Pid, regs: &Regs) -> nix::Result<()> {
    ptrace::setregset::<ptrace::regset::NT_PRSTATUS>(tid, regs.gp)?;
    sys::ptrace_set_syscall_nr(tid.as_raw(), regs.syscallno)
}

pub(crate) fn pc(regs: &Regs) -> u64 {
    regs.gp.pc
}

pub(crate) fn set_pc(regs: &mut Regs, pc: u64) {
    regs.gp.pc = pc;
}

pub(crate) fn ret(regs: &Regs) -> i64 {
    regs.gp.regs[0] as i64
}

/// Whether a thread stopped just after a system call instruction was
/// interrupted in that call: never so on arm64, where the kernel rewinds
/// `pc` to the `svc` before the stop.
pub(crate) fn restarting(_regs: &Regs) -> bool {
    false
}

/// What the thread is, if not a 64-bit one.
pub(crate) fn foreign(regs: &Regs) -> Option<&'static str> {
    (regs.gp.pstate & PSR_MODE32_BIT != 0).then_some("a 32-bit (AArch32) thread")
}

/// Never the `svc` the thread is in: its restart is already prepared.
pub(crate) fn current_insn(_regs: &Regs) -> Option<u64> {
    None
}

pub(crate) fn prepare(saved: &Regs, insn: u64, nr: libc::c_long, args: &[u64; 6]) -> Regs {
    let mut regs = *saved;
    regs.gp.pc = insn;
    regs.gp.regs[8] = nr as u64;
    regs.gp.regs[..6].copy_from_slice(args);
    regs.syscallno = -1;
    regs
}
