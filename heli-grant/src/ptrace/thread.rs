//! Which thread makes the call: the one that a stop disturbs least.

use std::io;

use heli_core::Pid;
use heli_proc::{Proc, Syscall};
use log::debug;

use super::arch;

/// The thread of `process` to inject into: the best by [`rank`], the main
/// thread first among equals; `None` when the best is in `execve` (which is
/// about to end the others and change its id: try again once it is done).
/// `main_exited`: its main thread has exited (it lingers as a zombie while
/// others run on), so it is never chosen.
pub(super) fn choose_thread(process: &Proc, main_exited: bool) -> io::Result<Option<Pid>> {
    let pid = process.pid();
    let mut tids = process.threads()?;
    if main_exited {
        tids.retain(|&tid| tid != pid);
    }
    if tids.len() <= 1 {
        return Ok(Some(tids.first().copied().unwrap_or(pid)));
    }
    let ranked = tids.iter().map(|&tid| {
        let rank = match process.thread_syscall(tid) {
            Ok(Some(syscall)) => rank(syscall),
            _ => Rank::Unknown,
        };
        (rank, tid != pid, tid)
    });
    let (rank, _, tid) = ranked.min().expect("at least two threads");
    debug!("PID {pid}: injecting into thread {tid} ({rank:?})");
    Ok((rank != Rank::Exec).then_some(tid))
}

/// How well a thread suits an injection, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// On a CPU, or ready to run: the stop interrupts nothing.
    Running,
    /// In user mode but not running (stopped, or faulting a page in).
    User,
    /// In a system call that the stop interrupts and the kernel restarts.
    Restartable,
    /// Its state could not be read.
    Unknown,
    /// In a call that returns `EINTR` when stopped (with a timeout).
    Eintr,
    /// In `execve`: about to replace the program, and the thread ids.
    Exec,
}

/// Ranks a thread by where its `/proc/PID/task/TID/syscall` says it is.
fn rank(syscall: Syscall) -> Rank {
    match syscall {
        Syscall::Running => Rank::Running,
        Syscall::User => Rank::User,
        Syscall::In(nr) if arch::EXEC.contains(&nr) => Rank::Exec,
        Syscall::In(nr) if arch::EINTR_PRONE.contains(&nr) => Rank::Eintr,
        Syscall::In(_) => Rank::Restartable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_threads() {
        assert_eq!(rank(Syscall::Running), Rank::Running);
        assert_eq!(rank(Syscall::User), Rank::User);
        assert_eq!(rank(Syscall::In(0)), Rank::Restartable);
        assert_eq!(rank(Syscall::In(arch::EINTR_PRONE[0])), Rank::Eintr);
        assert_eq!(rank(Syscall::In(arch::EXEC[0])), Rank::Exec);
        assert!(Rank::Running < Rank::Restartable && Rank::Unknown < Rank::Eintr);
        assert!(Rank::Eintr < Rank::Exec);
    }
}
