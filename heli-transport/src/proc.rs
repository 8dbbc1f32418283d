//! What `/proc` says about processes: their parents and start times.
//!
//! Used to decide whether a client may ask rights for a process: only for
//! itself or one of its descendants.

use std::io;

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 4: the parent's process id (0 for the kernel's own).
    pub(crate) ppid: u32,
    /// Field 22: when the process started, in clock ticks since boot.
    pub(crate) start: u64,
}

/// Longest chain of parents walked: more than any real process tree, far
/// less than forever should `/proc` show a loop.
const MAX_DEPTH: usize = 1 << 16;

/// Reads `/proc/<pid>/stat`; `None` when no such process exists (any more).
pub(crate) fn stat(pid: u32) -> io::Result<Option<ProcStat>> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read(&path) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {path}"))
        }),
        // ESRCH: the process ended while we read.
        Err(err)
            if err.kind() == io::ErrorKind::NotFound
                || err.raw_os_error() == Some(nix::libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(err) => Err(io::Error::new(err.kind(), format!("{path}: {err}"))),
    }
}

/// Parses `pid (comm) state ppid ... starttime ...`. The command name may
/// hold spaces and parentheses: the fields start after its *last* `)`.
fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let after = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[after + 1..]).ok()?;
    // Field 3 (state) is the first after the name.
    let mut fields = rest.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(22 - 5)?.parse().ok()?;
    Some(ProcStat { ppid, start })
}

/// Whether process `candidate` is process `ancestor` itself or one of its
/// descendants, where `ancestor` is the process that started at
/// `ancestor_start` (a pid alone may have been reused since).
///
/// # Race conditions
///
/// Processes come and go while `/proc` is read. The answer is `true` only
/// when every link was consistent: each parent started no later than its
/// child (a reused pid is younger than the process it would be the parent
/// of), the ancestor is still the process that started at
/// `ancestor_start`, and the candidate has the same start time and parent
/// after the walk as before it. A process that vanishes, or a chain that
/// reaches pid 1 or 0 first, means `false`.
pub(crate) fn is_self_or_descendant(
    candidate: u32,
    ancestor: u32,
    ancestor_start: u64,
) -> io::Result<bool> {
    descends(stat, candidate, ancestor, ancestor_start)
}

/// [`is_self_or_descendant`] reading process facts with `read`.
fn descends(
    read: impl Fn(u32) -> io::Result<Option<ProcStat>>,
    candidate: u32,
    ancestor: u32,
    ancestor_start: u64,
) -> io::Result<bool> {
    if candidate == 0 || ancestor == 0 {
        return Ok(false);
    }
    let Some(first) = read(candidate)? else {
        return Ok(false);
    };
    let found = if candidate == ancestor {
        first.start == ancestor_start
    } else {
        let mut child = first;
        let mut found = false;
        for _ in 0..MAX_DEPTH {
            let parent = child.ppid;
            if parent == 0 {
                break;
            }
            let Some(stat) = read(parent)? else {
                break;
            };
            if stat.start > child.start {
                // A reused pid: younger than its supposed child.
                break;
            }
            if parent == ancestor {
                found = stat.start == ancestor_start;
                break;
            }
            if parent == 1 {
                break;
            }
            child = stat;
        }
        found
    };
    if !found {
        return Ok(false);
    }
    // The candidate is still the process the walk started from.
    Ok(read(candidate)? == Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    fn table(entries: &[(u32, u32, u64)]) -> HashMap<u32, ProcStat> {
        entries
            .iter()
            .map(|&(pid, ppid, start)| (pid, ProcStat { ppid, start }))
            .collect()
    }

    fn check(procs: &HashMap<u32, ProcStat>, candidate: u32, ancestor: u32, start: u64) -> bool {
        descends(
            |pid| Ok(procs.get(&pid).copied()),
            candidate,
            ancestor,
            start,
        )
        .unwrap()
    }

    #[test]
    fn parses_stat_lines() {
        let line = b"4242 (we(ird) )name) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                ppid: 17,
                start: 987654
            })
        );
        assert_eq!(parse_stat(b"1 (init) S"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        let me = stat(std::process::id()).unwrap().unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(stat(i32::MAX as u32).unwrap(), None);
    }

    #[test]
    fn walks_parent_links() {
        // 1 -> 10 -> 20 -> 30 -> 40; 50 is 1's other child.
        let procs = table(&[
            (1, 0, 1),
            (10, 1, 100),
            (20, 10, 200),
            (30, 20, 300),
            (40, 30, 400),
            (50, 1, 500),
        ]);
        assert!(check(&procs, 20, 20, 200), "itself");
        assert!(check(&procs, 30, 20, 200), "child");
        assert!(check(&procs, 40, 20, 200), "grandchild");
        assert!(!check(&procs, 10, 20, 200), "its parent");
        assert!(!check(&procs, 1, 20, 200), "init");
        assert!(!check(&procs, 50, 20, 200), "unrelated");
        assert!(!check(&procs, 99, 20, 200), "no such process");
        assert!(!check(&procs, 40, 0, 0), "pid 0");
        // The ancestor pid now belongs to another process.
        assert!(!check(&procs, 40, 20, 199), "ancestor restarted");
        assert!(!check(&procs, 20, 20, 199), "itself, restarted");
    }

    #[test]
    fn a_reused_pid_is_no_parent() {
        // 30's parent 20 died and its pid went to a younger process whose
        // parent is the ancestor 10: 30 is no descendant of 10 any more.
        let procs = table(&[(1, 0, 1), (10, 1, 100), (20, 10, 350), (30, 20, 300)]);
        assert!(!check(&procs, 30, 10, 100));
        assert!(check(&procs, 20, 10, 100));
    }

    #[test]
    fn the_candidate_must_not_change_during_the_walk() {
        let procs = table(&[(1, 0, 1), (10, 1, 100), (30, 10, 300)]);
        let reads = Cell::new(0);
        // The second read of 30 (after the walk) shows another process.
        let verdict = descends(
            |pid| {
                if pid == 30 {
                    reads.set(reads.get() + 1);
                    if reads.get() > 1 {
                        return Ok(Some(ProcStat {
                            ppid: 10,
                            start: 301,
                        }));
                    }
                }
                Ok(procs.get(&pid).copied())
            },
            30,
            10,
            100,
        )
        .unwrap();
        assert!(!verdict);
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_loop_in_proc_ends() {
        let procs = table(&[(5, 6, 10), (6, 5, 10)]);
        assert!(!check(&procs, 5, 7, 1));
    }

    #[test]
    fn real_processes() {
        let me = std::process::id();
        let start = stat(me).unwrap().unwrap().start;
        assert!(is_self_or_descendant(me, me, start).unwrap());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let verdict = is_self_or_descendant(child.id(), me, start);
        let parent = is_self_or_descendant(std::os::unix::process::parent_id(), me, start);
        let _ = child.kill();
        let _ = child.wait();
        assert!(verdict.unwrap());
        assert!(!parent.unwrap());
        assert!(!is_self_or_descendant(1, me, start).unwrap());
    }
}
