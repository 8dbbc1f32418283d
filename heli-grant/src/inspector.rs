//! The inspector of CPython 3.14 targets: their stacks, read from memory,
//! and their process tree (or one process of it), read from `/proc`.

use std::io;

use heli_core::stacks::ThreadStack;
use heli_core::tasks::AsyncTasks;
use heli_core::tree::TreeProcess;
use heli_core::{Inspector, ProcessId};
use heli_proc::Member;

/// Reads a CPython 3.14 process's Python stacks from its memory, through
/// its debug offsets (PEP 768), without stopping it or running anything in
/// it; and lists the tree of processes a controller supervises, saying
/// which are such CPythons. What a controller answers `STACK`, `STACKS`
/// and `PS` with.
///
/// It needs the right to read the processes' memory, which the
/// controller, their ancestor, has under Yama `ptrace_scope=1`.
///
/// # Examples
///
/// ```no_run
/// use heli_core::{Inspector, Pid, Processes};
/// use heli_grant::PythonInspector;
///
/// let root = heli_proc::ProcFs.identity(Pid::new(4242).unwrap())?.unwrap();
/// // Every thread, most recent call last.
/// let threads = PythonInspector.stacks(root)?;
/// print!("{}", heli_core::stacks::threads_text(&threads));
/// // The tree under it, and which of its processes run Python.
/// for process in PythonInspector.tree(root)? {
///     println!("{} {:?} {}", process.pid, process.python, process.command);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PythonInspector;

impl Inspector for PythonInspector {
    /// Every thread's stack ([`PyProcess::stack_dump`](crate::PyProcess::stack_dump)),
    /// with its activity and whether it holds the GIL where that can be
    /// told, of `process` and no other: it is opened by its identity
    /// ([`PyProcess::open_id`](crate::PyProcess::open_id): `/proc/PID`
    /// opened, then its start time checked there) and the dump is
    /// returned only if it still runs after it (its memory is read by pid:
    /// a process that still runs held its pid all along).
    fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        Ok(crate::PyProcess::open_id(process)?.stack_dump()?)
    }

    /// `root` and its living descendants ([`heli_proc::members`]), each
    /// with what `ps` shows of it ([`heli_proc::Usage`],
    /// [`command_line`](heli_proc::Proc::command_line): `[name]` when it
    /// has none, as `ps` shows a
    /// kernel thread) and its CPython version when it is a CPython 3.14
    /// whose stacks [`stacks`](Self::stacks) can read.
    ///
    /// Which processes are CPythons is remembered from one call to the
    /// next, per process and program file (a process that calls `execve`,
    /// or a pid reused, is found out afresh), so that a call costs a few
    /// reads of `/proc` per process. A process that ends during the call is
    /// left out.
    ///
    /// # Race conditions
    ///
    /// Reading a process's command line or memory map waits for its
    /// memory map's lock, which a process stopped in a rare state may
    /// hold: call it where a wait is allowed (the controller does, on a
    /// thread of its own with a deadline).
    fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
        heli_proc::members(root, facts)
    }

    /// The facts of `process` alone ([`heli_proc::member`]: the same read
    /// as each process of [`tree`](Self::tree)), without reading its
    /// descendants; `None` once it no longer runs.
    ///
    /// # Race conditions
    ///
    /// As [`tree`](Self::tree)'s, for this process only.
    fn process(&self, process: ProcessId) -> io::Result<Option<TreeProcess>> {
        heli_proc::member(process)?.as_ref().map(facts).transpose()
    }

    /// Its asyncio tasks ([`PyProcess::async_tasks`](crate::PyProcess::async_tasks)),
    /// of `process` and no other, as [`stacks`](Self::stacks) reads.
    fn tasks(&self, process: ProcessId) -> io::Result<AsyncTasks> {
        Ok(crate::PyProcess::open_id(process)?.async_tasks()?)
    }
}

/// What `PS` shows of `member`.
fn facts(member: &Member) -> io::Result<TreeProcess> {
    let (proc, info, usage) = (&member.proc, &member.info, &member.usage);
    let mut process = TreeProcess::new(info.id.pid);
    process.start_time = info.id.start_time;
    process.parent = info.parent;
    process.state = info.state.code();
    process.threads = usage.threads;
    process.cpu_percent = usage.cpu_percent;
    process.rss_bytes = usage.rss_bytes;
    process.uptime_secs = usage.uptime_secs;
    process.uid = info.uid;
    process.euid = info.euid;
    process.command = proc.command_line()?;
    if process.command.is_empty() {
        process.command = format!("[{}]", usage.name);
    }
    // Unreadable (another user's, a zombie leader): asked afresh.
    let exe = proc.exe_id().ok().flatten();
    process.python = crate::python::python_version(info.id, exe, usage.vm_bytes)
        .map(|version| version.to_string());
    Ok(process)
}
