//! A process and its descendants, as `/proc` shows them now.

use std::collections::HashMap;
use std::io;

use heli_core::{Pid, ProcessId, ProcessInfo, ProcessState};

use crate::error::to_io;
use crate::process::Proc;
use crate::usage::Usage;

/// Process `root` and every living descendant of it, each before its
/// children (children in pid order, depth first: the order of `ps f`): the
/// tree a supervisor is responsible for. Empty when `root` is no longer
/// the process it names.
///
/// Where the kernel lists each thread's children (`/proc/PID/task/TID/
/// children`), only the tree's members are read; elsewhere one pass over
/// `/proc` reads every process's parent first.
///
/// # Race conditions
///
/// Processes come and go while `/proc` is read. A process is listed only
/// when the chain to `root` was consistent: each child started no earlier
/// than its parent (a pid reused by a younger process is never taken for a
/// parent), and it still had its parent when read in full. A process born
/// during the walk may be missing; one that left the tree (re-parented
/// elsewhere) is not listed. Zombies are left out.
///
/// # Errors
///
/// When `/proc` cannot be read.
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, Processes};
/// use heli_proc::{descendants, ProcFs};
///
/// let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
/// let me = ProcFs.identity(Pid::this())?.unwrap();
/// let tree = descendants(me)?;
/// assert_eq!(tree[0].id, me);
/// assert!(tree.iter().any(|p| p.id.pid.get() == child.id()));
/// child.kill()?;
/// child.wait()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn descendants(root: ProcessId) -> io::Result<Vec<ProcessInfo>> {
    members(root, |member| Ok(member.info.clone()))
}

/// One process of a tree, as [`members`] shows it: opened, its facts and
/// its use of the machine (from the same read of `/proc/PID/stat`).
#[derive(Debug)]
#[non_exhaustive]
pub struct Member {
    /// The process, opened: more can be read of it, and never of another
    /// process that reuses its pid.
    pub proc: Proc,
    /// Its facts.
    pub info: ProcessInfo,
    /// Its use of the machine.
    pub usage: Usage,
}

/// [`descendants`], each shown to `visit` with what `ps` shows of it and
/// its `/proc` directory open, in about three reads of `/proc` per process
/// (`stat`, `status` and its children): what a listing of the tree needs.
/// The answers of `visit`, in the order of [`descendants`].
///
/// One process is open at a time, however large the tree.
///
/// # Errors
///
/// When `/proc` cannot be read, or `visit` fails (the walk stops there).
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, Processes};
/// use heli_proc::{members, ProcFs};
///
/// let me = ProcFs.identity(Pid::this())?.unwrap();
/// let commands = members(me, |member| {
///     assert!(member.usage.threads >= 1);
///     member.proc.command_line()
/// })?;
/// assert!(commands[0].len() > 0);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn members<T>(
    root: ProcessId,
    mut visit: impl FnMut(&Member) -> io::Result<T>,
) -> io::Result<Vec<T>> {
    let mut tree = Vec::new();
    let Some(first) = member(root)? else {
        return Ok(tree);
    };
    // parent -> children, from a scan of /proc when the kernel has no
    // children files.
    let mut scanned: Option<HashMap<u32, Vec<Pid>>> = None;
    // What is left to read, the next on top, with the parent it must have.
    let mut todo: Vec<(ProcessId, Pid)> = Vec::new();
    let mut next = Some(first);
    loop {
        if let Some(member) = next.take() {
            tree.push(visit(&member)?);
            let mut kids = children(&member, &mut scanned)?;
            kids.sort_unstable();
            kids.dedup();
            todo.extend(kids.into_iter().rev().map(|kid| (member.info.id, kid)));
        }
        let Some((parent, pid)) = todo.pop() else {
            break;
        };
        // A reused pid is younger than its supposed child.
        next = read(pid)?.filter(|kid| {
            kid.info.parent == Some(parent.pid) && kid.info.id.start_time >= parent.start_time
        });
    }
    Ok(tree)
}

/// Process `id` alone, as [`members`] shows each process of a tree (the
/// same read), without looking at its children: `None` when it is no
/// longer running (gone, a zombie, or its pid names another process now).
///
/// # Errors
///
/// When `/proc` cannot be read.
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, Processes};
/// use heli_proc::{member, ProcFs};
///
/// let me = ProcFs.identity(Pid::this())?.unwrap();
/// let member = member(me)?.expect("this process runs");
/// assert_eq!(member.info.id, me);
/// assert!(member.usage.threads >= 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn member(id: ProcessId) -> io::Result<Option<Member>> {
    Ok(read(id.pid)?.filter(|member| member.info.id == id))
}

/// The children of `member`: from its children files, or from a scan of
/// `/proc` (made once, kept in `scanned`) when the kernel has none.
fn children(member: &Member, scanned: &mut Option<HashMap<u32, Vec<Pid>>>) -> io::Result<Vec<Pid>> {
    if scanned.is_none() {
        if let Some(kids) = member.proc.children_of(member.usage.threads)? {
            return Ok(kids);
        }
        *scanned = Some(scan()?);
    }
    let table = scanned.as_ref().expect("scanned above");
    Ok(table
        .get(&member.info.id.pid.get())
        .cloned()
        .unwrap_or_default())
}

/// The living members of process group `group` (a zombie left out), from
/// one pass over `/proc`, in pid order.
///
/// # Errors
///
/// When `/proc` cannot be listed.
///
/// # Examples
///
/// ```
/// use heli_core::Pid;
///
/// let mine = nix::unistd::getpgrp().as_raw() as u32;
/// let members = heli_proc::group_members(Pid::new(mine).unwrap())?;
/// assert!(members.contains(&Pid::this()));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn group_members(group: Pid) -> io::Result<Vec<Pid>> {
    let all = procfs::process::all_processes().map_err(|err| to_io(err, "/proc"))?;
    let mut members: Vec<Pid> = all
        .filter_map(|process| process.ok()?.stat().ok())
        .filter(|stat| {
            u32::try_from(stat.pgrp).ok() == Some(group.get())
                && !ProcessState::from_code(stat.state).is_gone()
        })
        .filter_map(|stat| u32::try_from(stat.pid).ok().and_then(Pid::new))
        .collect();
    members.sort_unstable();
    Ok(members)
}

/// Every process's children, from one pass over `/proc`.
fn scan() -> io::Result<HashMap<u32, Vec<Pid>>> {
    let all = procfs::process::all_processes().map_err(|err| to_io(err, "/proc"))?;
    let mut children: HashMap<u32, Vec<Pid>> = HashMap::new();
    for process in all {
        // A process that vanished since the listing: skip it.
        let Ok(process) = process else { continue };
        let Ok(stat) = process.stat() else { continue };
        let (Ok(pid), Ok(ppid)) = (u32::try_from(stat.pid), u32::try_from(stat.ppid)) else {
            continue;
        };
        if let Some(pid) = Pid::new(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    Ok(children)
}

/// `pid` read, unless it is gone or a zombie: a member of a tree, or
/// [`member`].
fn read(pid: Pid) -> io::Result<Option<Member>> {
    let Some(proc) = Proc::open(pid)? else {
        return Ok(None);
    };
    let what = format_args!("/proc/{pid}/stat");
    let Some(stat) = crate::error::unless_gone(proc.stat(), what)? else {
        return Ok(None);
    };
    let Some(info) = proc.info_from(&stat)? else {
        return Ok(None);
    };
    if matches!(info.state, ProcessState::Zombie | ProcessState::Dead) {
        return Ok(None);
    }
    let usage = Usage::from_stat(stat);
    Ok(Some(Member { proc, info, usage }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProcFs;
    use heli_core::Processes;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn lists_children_and_grandchildren_but_not_strangers_or_orphans() {
        // sh -> sh -> sleep (grandchild), sh -> sleep (child, started
        // after the inner sh: listed after its subtree); and an orphan
        // whose parent exited (re-parented: no longer ours).
        let mut shell = Command::new("sh")
            .args([
                "-c",
                "sh -c 'sleep 30 & echo grandchild $!; wait' & sleep 30 & \
                 (sleep 30 & echo orphan $!) ; sleep 0.2; echo ready; wait",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut grandchild, mut orphan) = (0, 0);
        for line in BufReader::new(shell.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            match line.split_once(' ') {
                Some(("grandchild", pid)) => grandchild = pid.parse().unwrap(),
                Some(("orphan", pid)) => orphan = pid.parse().unwrap(),
                _ if line == "ready" => break,
                _ => panic!("{line:?}"),
            }
        }
        assert!(grandchild > 0 && orphan > 0);
        let root = ProcFs
            .identity(Pid::new(shell.id()).unwrap())
            .unwrap()
            .unwrap();
        let tree = descendants(root).unwrap();
        let listed: Vec<u32> = tree.iter().map(|info| info.id.pid.get()).collect();
        let _ = Command::new("kill")
            .args([grandchild.to_string(), orphan.to_string()])
            .status();
        let _ = shell.kill();
        let _ = shell.wait();

        assert_eq!(listed[0], shell.id(), "{listed:?}");
        assert!(listed.contains(&grandchild), "{listed:?}");
        assert!(!listed.contains(&orphan), "orphan listed: {listed:?}");
        assert!(!listed.contains(&std::process::id()));
        // Parents come before their children.
        for info in &tree[1..] {
            let parent = info.parent.unwrap().get();
            let at = listed.iter().position(|&pid| pid == parent).unwrap();
            let me = listed
                .iter()
                .position(|&pid| pid == info.id.pid.get())
                .unwrap();
            assert!(at < me, "{listed:?}");
        }
        // Depth first (`ps f`): each process's parent is the one before it
        // or an ancestor of that one.
        let parent_of = |pid: u32| {
            tree.iter()
                .find(|info| info.id.pid.get() == pid)
                .and_then(|info| info.parent)
                .map(Pid::get)
        };
        for pair in listed.windows(2) {
            let (before, pid) = (pair[0], pair[1]);
            let parent = parent_of(pid).unwrap();
            let mut ancestor = Some(before);
            while ancestor.is_some_and(|a| a != parent) {
                ancestor = ancestor.and_then(parent_of);
            }
            assert_eq!(ancestor, Some(parent), "{listed:?}");
        }
        // sh, sleep, sh, sleep: at least four.
        assert!(tree.len() >= 4, "{listed:?}");
    }

    #[test]
    fn the_scan_finds_what_the_children_files_find() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let table = scan().unwrap();
        let kids = table.get(&std::process::id()).cloned().unwrap_or_default();
        let listed = Proc::open(Pid::this())
            .unwrap()
            .unwrap()
            .children()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let child = Pid::new(child.id()).unwrap();
        assert!(kids.contains(&child), "{kids:?}");
        // Where the kernel has children files, they agree.
        if let Some(listed) = listed {
            assert!(listed.contains(&child), "{listed:?}");
        }
    }

    #[test]
    fn a_root_that_is_not_the_process_named_has_no_tree() {
        let me = ProcFs.identity(Pid::this()).unwrap().unwrap();
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(descendants(other).unwrap().is_empty());
        let gone = ProcessId {
            pid: Pid::new(Pid::MAX).unwrap(),
            start_time: 1,
        };
        assert!(descendants(gone).unwrap().is_empty());
        // One process alone: the same answers.
        assert!(member(other).unwrap().is_none());
        assert!(member(gone).unwrap().is_none());
        let alone = member(me).unwrap().unwrap().info;
        let listed = &descendants(me).unwrap()[0];
        assert_eq!((alone.id, alone.parent), (listed.id, listed.parent));
    }
}
