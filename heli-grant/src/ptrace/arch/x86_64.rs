//! x86_64: `syscall` (`0f 05`), number in `rax`, arguments in `rdi`,
//! `rsi`, `rdx`, `r10`, `r8`, `r9`, result in `rax`; `orig_rax` tells the
//! kernel whether the thread is in a system call (-1: no).

use nix::sys::ptrace;
use nix::unistd::Pid;

pub(crate) type Regs = libc::user_regs_struct;

pub(crate) const INSN: &[u8] = &[0x0f, 0x05];
pub(crate) const INSN_ALIGN: usize = 1;

/// Calls that a ptrace stop ends with `EINTR` (when they have a timeout,
/// for the socket ones), instead of restarting them.
pub(crate) const EINTR_PRONE: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_io_getevents,
    333, // io_pgetevents
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

/// The user code segment of 32-bit tasks.
const USER32_CS: u64 = 0x23;

pub(crate) fn get(tid: Pid) -> nix::Result<Regs> {
    ptrace::getregs(tid)
}

pub(crate) fn set(tid: Pid, regs: &Regs) -> nix::Result<()> {
    ptrace::setregs(tid, *regs)
}

pub(crate) fn pc(regs: &Regs) -> u64 {
    regs.rip
}

pub(crate) fn set_pc(regs: &mut Regs, pc: u64) {
    regs.rip = pc;
}

pub(crate) fn ret(regs: &Regs) -> i64 {
    regs.rax as i64
}

/// Whether a thread stopped just after a system call instruction was
/// interrupted in that call, which the kernel would restart: it is still
/// "in" the call (`orig_rax` set) and `rax` holds a restart code.
pub(crate) fn restarting(regs: &Regs) -> bool {
    (regs.orig_rax as i64) >= 0 && matches!(regs.rax as i64, -512 | -513 | -514 | -516)
}

/// What the thread is, if not a 64-bit one.
pub(crate) fn foreign(regs: &Regs) -> Option<&'static str> {
    (regs.cs == USER32_CS).then_some("a 32-bit (ia32) thread")
}

/// The `syscall` instruction a thread in a system call is leaving, to
/// check; `None` in user mode.
pub(crate) fn current_insn(regs: &Regs) -> Option<u64> {
    (regs.orig_rax as i64 >= 0).then(|| regs.rip.wrapping_sub(2))
}

pub(crate) fn prepare(saved: &Regs, insn: u64, nr: libc::c_long, args: &[u64; 6]) -> Regs {
    let mut regs = *saved;
    regs.rip = insn;
    regs.rax = nr as u64;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    // Not in a system call: keeps the kernel's restart logic off our
    // registers.
    regs.orig_rax = u64::MAX;
    regs
}
