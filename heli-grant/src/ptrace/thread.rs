//! Which thread makes the call: the one that a stop disturbs least.

use std::fs;
use std::io;

use log::debug;

use super::arch;
use super::procfs::proc_error;

/// The thread to inject into: the best by [`rank`], the main thread first
/// among equals.
pub(super) fn choose_thread(pid: u32) -> io::Result<u32> {
    let path = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&path).map_err(|err| proc_error(pid, &path, err))?;
    let tids: Vec<u32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    if tids.len() <= 1 {
        return Ok(tids.first().copied().unwrap_or(pid));
    }
    let ranked = tids.iter().map(|&tid| {
        let rank = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
            .map_or(Rank::Unknown, |text| rank(&text));
        (rank, tid != pid, tid)
    });
    let (rank, _, tid) = ranked.min().expect("at least two threads");
    debug!("PID {pid}: injecting into thread {tid} ({rank:?})");
    Ok(tid)
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
}

/// Ranks a thread by its `/proc/PID/task/TID/syscall`: `running`, `-1 sp
/// pc` (user mode), or `nr args... sp pc`.
fn rank(syscall: &str) -> Rank {
    let first = syscall.split_whitespace().next().unwrap_or("");
    if first == "running" {
        return Rank::Running;
    }
    match first.parse::<i64>() {
        Ok(-1) => Rank::User,
        Ok(nr) if arch::EINTR_PRONE.contains(&nr) => Rank::Eintr,
        Ok(_) => Rank::Restartable,
        Err(_) => Rank::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_threads() {
        assert_eq!(rank("running\n"), Rank::Running);
        assert_eq!(rank("-1 0x7ffc 0x5555\n"), Rank::User);
        let read = "0 0x3 0x7f 0x64 0x0 0x0 0x0 0x7ffc 0x7f12\n";
        assert_eq!(rank(read), Rank::Restartable);
        let epoll = format!(
            "{} 0x3 0x7f 0x64 0x0 0x0 0x0 0x7ffc 0x7f12\n",
            arch::EINTR_PRONE[0]
        );
        assert_eq!(rank(&epoll), Rank::Eintr);
        assert_eq!(rank(""), Rank::Unknown);
        assert!(Rank::Running < Rank::Restartable && Rank::Unknown < Rank::Eintr);
    }
}
