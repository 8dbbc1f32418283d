//! The inspector of CPython 3.14 targets: their stacks, read from memory,
//! and their process tree (or one process of it), read from `/proc`.

use std::collections::HashMap;
use std::io;

use heli_core::stacks::ThreadStack;
use heli_core::tasks::AsyncTasks;
use heli_core::tree::TreeProcess;
use heli_core::{Inspector, ProcessId, StackReader};
use heli_proc::Member;
use log::debug;

use crate::PyProcess;

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

    /// A reader that keeps the processes it opened (the first 16 it read
    /// that still run: a profile going round a larger tree keeps opening
    /// the others, rather than every one) from one read to the next: a
    /// read of one it has is a [`stack_dump`](crate::PyProcess::stack_dump) alone,
    /// without finding the runtime again (`/proc/PID`, its memory, its
    /// maps, its files). Every read checks as [`stacks`](Self::stacks)'s
    /// does that the process still runs, and that its runtime is still
    /// the one found (a process that called `execve` has another); when a
    /// read of a kept process fails, it is opened afresh and read again.
    fn stack_reader(&self) -> Box<dyn StackReader + '_> {
        Box::new(Reader::default())
    }
}

/// How many opened processes a [`PythonInspector::stack_reader`] keeps
/// (each holds three files open: its `/proc` directory, its memory's, and
/// that memory itself, pinned: see `PyProcess::same_runtime`).
const KEPT: usize = 16;

/// [`PythonInspector`]'s [`StackReader`].
#[derive(Debug, Default)]
struct Reader {
    /// At most [`KEPT`]; one whose read fails is dropped.
    opened: HashMap<ProcessId, PyProcess>,
    /// How many times it opened a process.
    opens: u64,
}

impl StackReader for Reader {
    fn stacks(&mut self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        if let Some(opened) = self.opened.get(&process) {
            match opened.stack_dump() {
                Ok(threads) => return Ok(threads),
                Err(err) => debug!("PID {}: opened again: {err}", process.pid),
            }
            self.opened.remove(&process);
        }
        self.opens += 1;
        let opened = PyProcess::open_id(process)?;
        let threads = opened.stack_dump()?;
        if self.opened.len() < KEPT {
            self.opened.insert(process, opened);
        }
        Ok(threads)
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::test_python::Target;

    /// The functions of the main thread's stack, innermost last.
    /// (None yet while a new program starts.)
    fn functions(threads: &[ThreadStack]) -> Vec<&str> {
        threads
            .first()
            .iter()
            .flat_map(|main| &main.frames)
            .map(|frame| frame.function.as_str())
            .collect()
    }

    /// Reads until the main thread is in `function`, for 10 s at most.
    fn read_until(reader: &mut Reader, id: ProcessId, function: &str) -> Vec<ThreadStack> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read = reader.stacks(id);
            if let Ok(threads) = &read {
                if functions(threads).contains(&function) {
                    return read.unwrap();
                }
            }
            assert!(Instant::now() < deadline, "never in {function}: {read:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Spins in `before()` until a line comes on stdin, then runs
    /// `exec_args` (Python's `os.execv`) in the same process.
    fn execs(exec_args: &str) -> String {
        format!(
            r#"
import os, sys, threading
go = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
def before():
    while not go.is_set():
        pass
print("ready", flush=True)
before()
os.execv({exec_args})
"#
        )
    }

    #[test]
    fn a_reader_opens_a_process_once_for_all_its_reads() {
        let mut target = Target::start(&execs("sys.executable, [sys.executable, '-c', 'pass']"));
        assert_eq!(target.line(), "ready\n");
        let id = target.id();
        let mut reader = Reader::default();
        read_until(&mut reader, id, "before");
        for _ in 0..50 {
            let threads = reader.stacks(id).unwrap();
            assert!(functions(&threads).contains(&"before"), "{threads:?}");
        }
        assert_eq!(reader.opens, 1);
    }

    #[test]
    fn a_reader_going_round_more_processes_than_it_keeps_keeps_the_first() {
        let mut targets: Vec<Target> = (0..KEPT + 2)
            .map(|_| {
                Target::start("print('ready', flush=True)\nimport time\nwhile True: time.sleep(1)")
            })
            .collect();
        let ids: Vec<ProcessId> = targets
            .iter_mut()
            .map(|target| {
                assert_eq!(target.line(), "ready\n");
                target.id()
            })
            .collect();
        let mut reader = Reader::default();
        for _ in 0..3 {
            for &id in &ids {
                reader.stacks(id).unwrap();
            }
        }
        // All opened once; then only the two it has no room for, at each
        // round.
        assert_eq!(reader.opens, (KEPT + 2 + 2 * 2) as u64);
    }

    #[test]
    fn a_reader_follows_a_process_that_runs_python_again() {
        let after =
            r#"'-c', 'import time\ndef after():\n    while True: time.sleep(0.01)\nafter()'"#;
        let code = execs(&format!("sys.executable, [sys.executable, {after}]"));
        let mut target = Target::start(&code);
        assert_eq!(target.line(), "ready\n");
        let id = target.id();
        let mut reader = Reader::default();
        read_until(&mut reader, id, "before");
        writeln!(target.input, "go").unwrap();
        let threads = read_until(&mut reader, id, "after");
        assert_eq!(functions(&threads), ["<module>", "after"]);
    }

    #[test]
    fn a_reader_says_when_a_process_runs_another_program() {
        let mut target = Target::start(&execs("'/bin/sleep', ['sleep', '600']"));
        assert_eq!(target.line(), "ready\n");
        let id = target.id();
        let mut reader = Reader::default();
        read_until(&mut reader, id, "before");
        writeln!(target.input, "go").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match reader.stacks(id) {
                Ok(_) => assert!(Instant::now() < deadline, "still read as Python"),
                Err(err) => break err,
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(err.to_string().contains("not a Python process"), "{err}");
    }
}
