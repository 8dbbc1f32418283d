//! The asyncio tasks of a CPython 3.14, read from its memory as
//! `python -m asyncio pstree` reads them, without stopping it or running
//! anything in it.
//!
//! CPython 3.14's `_asyncio` module (an extension module on most builds,
//! built into the interpreter on some) describes its structures in a table
//! of its own, `_Py_AsyncioModuleDebugOffsets`, in an ELF section named
//! `.AsyncioDebug`: 13 little-endian `u64` words, without a cookie or a
//! version (the `_Py_DebugOffsets` found in `_PyRuntime` tells the
//! version). It says where, in a `TaskObj`, the task's name, coroutine,
//! awaiters and list node are; and where, in a thread state and an
//! interpreter state, the lists of tasks and the running loop are.
//!
//! Each thread keeps its pending tasks in a circular doubly linked list
//! headed in its thread state (`asyncio_tasks_head`); the interpreter's
//! list holds the tasks of threads that ended. A task's `task_awaited_by`
//! is the one task (or future) that awaits it or, when
//! `task_awaited_by_is_set`, a `set` of them. A task's coroutine stack is
//! its coroutine, then, while a coroutine is suspended in an `await`
//! (`gi_frame_state` is `FRAME_SUSPENDED_YIELD_FROM`), the object on top of
//! its frame's value stack, as long as that object is a coroutine of the
//! same type.
//!
//! Every list, set and chain is bounded ([`MAX_TASKS`], [`MAX_AWAITERS`],
//! [`MAX_CHAIN`], [`MAX_TEXT`]): a corrupt or changing target ends a read
//! with an error or a note, never a hang, a panic or a huge answer.

use std::collections::HashSet;
use std::fs::File;

use heli_core::stacks::Frame;
use heli_core::tasks::{AsyncTask, AsyncTasks};

use super::elf::PyRuntimeSection;
use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::at;
use super::offsets::{fits, MAX_STRUCT};
use super::process::{mapped_files, PyProcess, MAX_INTERPRETERS};
use super::stack::Walker;

/// At most this many tasks are read in all (as CPython's own reader).
pub(crate) const MAX_TASKS: usize = 1 << 16;
/// At most this many awaiters per task (slots of its set read).
pub(crate) const MAX_AWAITERS: usize = 1 << 16;
/// At most this many coroutines per task's stack.
pub(crate) const MAX_CHAIN: usize = 1024;
/// At most this much text (names and file names) and awaiter sets' slots
/// per read.
pub(crate) const MAX_TEXT: usize = 8 << 20;
/// At most this many threads per interpreter.
const MAX_THREADS: usize = 1 << 16;
/// The section `_asyncio` puts its debug offsets in.
const SECTION: &[u8] = b".AsyncioDebug";
/// The size of `_Py_AsyncioModuleDebugOffsets`: 13 words.
const SIZE: usize = 13 * 8;
/// How often a read that met a changing target is tried.
const ATTEMPTS: usize = 3;
/// `_PyStackRef` and object pointer tag bits.
const TAG_BITS: u64 = 0b11;
/// `gi_frame_state` of a coroutine suspended in an `await`.
const FRAME_SUSPENDED_YIELD_FROM: i8 = -1;
/// `_frameowner` of a generator's or coroutine's frame.
const OWNED_BY_GENERATOR: u8 = 1;
/// From this `_frameowner` on, frames run no Python code.
const OWNED_BY_INTERPRETER: u8 = 3;
/// `tp_flags` bits of subclasses of `int` and `str`.
const LONG_SUBCLASS: u64 = 1 << 24;
const UNICODE_SUBCLASS: u64 = 1 << 28;

/// `_Py_AsyncioModuleDebugOffsets`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AsyncioOffsets {
    task_size: u64,
    task_name: u64,
    task_awaited_by: u64,
    task_is_task: u64,
    task_awaited_by_is_set: u64,
    task_coro: u64,
    task_node: u64,
    interp_size: u64,
    interp_tasks_head: u64,
    tstate_size: u64,
    running_loop: u64,
    running_task: u64,
    tstate_tasks_head: u64,
}

impl AsyncioOffsets {
    /// Decodes and checks the section's 13 words: each offset, with its
    /// width, lies inside its structure, of a believable size.
    pub(crate) fn parse(raw: &[u8]) -> Result<AsyncioOffsets, Pep768Error> {
        if raw.len() < SIZE {
            return Err(corrupt(&format!(
                "_Py_AsyncioModuleDebugOffsets: {} bytes, not {SIZE}",
                raw.len()
            )));
        }
        let w = |i: usize| le64(raw, 8 * i);
        let o = AsyncioOffsets {
            task_size: w(0),
            task_name: w(1),
            task_awaited_by: w(2),
            task_is_task: w(3),
            task_awaited_by_is_set: w(4),
            task_coro: w(5),
            task_node: w(6),
            interp_size: w(7),
            interp_tasks_head: w(8),
            tstate_size: w(9),
            running_loop: w(10),
            running_task: w(11),
            tstate_tasks_head: w(12),
        };
        let checks = [
            ("task_name", o.task_name, 8, o.task_size),
            ("task_awaited_by", o.task_awaited_by, 8, o.task_size),
            ("task_is_task", o.task_is_task, 1, o.task_size),
            (
                "task_awaited_by_is_set",
                o.task_awaited_by_is_set,
                1,
                o.task_size,
            ),
            ("task_coro", o.task_coro, 8, o.task_size),
            ("task_node", o.task_node, 16, o.task_size),
            ("asyncio_tasks_head", o.interp_tasks_head, 16, o.interp_size),
            ("asyncio_running_loop", o.running_loop, 8, o.tstate_size),
            ("asyncio_running_task", o.running_task, 8, o.tstate_size),
            ("asyncio_tasks_head", o.tstate_tasks_head, 16, o.tstate_size),
        ];
        for (what, offset, width, size) in checks {
            fits(what, offset, width, size).map_err(|why| {
                corrupt(&format!(
                    "_Py_AsyncioModuleDebugOffsets contradict themselves ({why})"
                ))
            })?;
        }
        if o.task_size > 4096 {
            return Err(corrupt(&format!("TaskObj size {:#x}", o.task_size)));
        }
        Ok(o)
    }
}

/// The offsets of `_Py_DebugOffsets` the reader uses besides those of the
/// stack reader, checked.
#[derive(Clone, Copy, Debug)]
struct ObjectOffsets {
    llist_next: u64,
    tp_flags: u64,
    gen_size: u64,
    gi_iframe: u64,
    gi_frame_state: u64,
    stackpointer: u64,
    set_used: u64,
    set_table: u64,
    set_mask: u64,
    set_size: u64,
    long_size: u64,
    lv_tag: u64,
    ob_digit: u64,
}

impl ObjectOffsets {
    fn of(py: &PyProcess) -> Result<ObjectOffsets, Pep768Error> {
        let debug = py.debug_offsets();
        let get = |group: &str, field: &str| debug.get(group, field).unwrap_or(u64::MAX);
        let o = ObjectOffsets {
            llist_next: get("llist_node", "next"),
            tp_flags: get("type_object", "tp_flags"),
            gen_size: get("gen_object", "size"),
            gi_iframe: get("gen_object", "gi_iframe"),
            gi_frame_state: get("gen_object", "gi_frame_state"),
            stackpointer: get("interpreter_frame", "stackpointer"),
            set_used: get("set_object", "used"),
            set_table: get("set_object", "table"),
            set_mask: get("set_object", "mask"),
            set_size: get("set_object", "size"),
            long_size: get("long_object", "size"),
            lv_tag: get("long_object", "lv_tag"),
            ob_digit: get("long_object", "ob_digit"),
        };
        let frame = py.offsets().frame;
        let ok = o.llist_next <= 8
            && o.tp_flags < MAX_STRUCT
            && (1..=4096).contains(&o.gen_size)
            && o.gi_frame_state < o.gen_size
            && o.gi_iframe.saturating_add(frame.size) <= o.gen_size
            && o.stackpointer.saturating_add(8) <= frame.size
            && (1..=4096).contains(&o.set_size)
            && [o.set_used, o.set_table, o.set_mask]
                .iter()
                .all(|&at| at.saturating_add(8) <= o.set_size)
            && (1..=4096).contains(&o.long_size)
            && o.lv_tag.saturating_add(8) <= o.long_size
            && o.ob_digit < MAX_STRUCT;
        if !ok {
            return Err(corrupt(&format!(
                "_Py_DebugOffsets of CPython {} place generators, sets or ints where they \
                 cannot be",
                py.version()
            )));
        }
        Ok(o)
    }
}

impl PyProcess {
    /// Its asyncio tasks: every pending task of every thread (the oldest
    /// thread first) and of the interpreters' own lists, each thread's in
    /// the order they were created, each with its name, its coroutine
    /// stack and the tasks that await it; and the threads that run an
    /// event loop. No task, with a [`note`](AsyncTasks::note), when it has
    /// not loaded `_asyncio`.
    ///
    /// A read that met a list or a chain changing under it is tried again
    /// (three times in all).
    ///
    /// # Errors
    ///
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess) when it exited
    /// (before or during the read); [`Corrupt`](Pep768ErrorKind::Corrupt)
    /// when its lists kept changing, or its debug offsets are
    /// inconsistent; [`PermissionDenied`](Pep768ErrorKind::PermissionDenied).
    pub fn async_tasks(&self) -> Result<AsyncTasks, Pep768Error> {
        let Some(offsets) = self.asyncio_offsets()? else {
            let mut tasks = AsyncTasks::new(self.pid());
            tasks.note = Some(
                "the _asyncio module is not loaded: the process has not imported asyncio".into(),
            );
            return self.still_running(tasks);
        };
        let objects = ObjectOffsets::of(self)?;
        let mut attempt = 1;
        let tasks = loop {
            let mut reader = Reader {
                py: self,
                walker: Walker::new(self),
                a: offsets,
                o: objects,
                text: 0,
            };
            match reader.read() {
                Err(err) if err.kind() == Pep768ErrorKind::Corrupt && attempt < ATTEMPTS => {
                    attempt += 1;
                }
                result => break result?,
            }
        };
        self.still_running(tasks)
    }

    /// `tasks`, if the process still runs: all it read was its own.
    fn still_running(&self, tasks: AsyncTasks) -> Result<AsyncTasks, Pep768Error> {
        if !self.is_running()? {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NoSuchProcess,
                format!("PID {} exited while its tasks were read", self.pid()),
            ));
        }
        Ok(tasks)
    }

    /// The `_asyncio` module's debug offsets, from its section in the
    /// memory of the process: in a mapped `_asyncio` extension module, or
    /// in the file that holds the runtime when the module is built in.
    /// `None` when neither has it (asyncio not imported).
    pub(crate) fn asyncio_offsets(&self) -> Result<Option<AsyncioOffsets>, Pep768Error> {
        let pid = self.pid();
        let maps = self
            .proc()
            .maps()
            .map_err(|err| Pep768Error::io(format!("cannot read /proc/{pid}/maps"), err))?;
        let mut files = mapped_files(&maps, b"_asyncio");
        let library = self.library().to_string_lossy().into_owned();
        files.extend(
            mapped_files(&maps, b"python")
                .into_iter()
                .filter(|mapped| library.ends_with(mapped.path.as_str())),
        );
        for mapped in files {
            let (path, file): (_, File) = mapped.open(pid.get())?;
            let section = PyRuntimeSection::find_named_in(&file, SECTION)
                .map_err(|err| err.context(&path.display().to_string()))?;
            let Some(section) = section else {
                continue;
            };
            if section.sh_size < SIZE as u64 {
                return Err(corrupt(&format!(
                    "{}: .AsyncioDebug holds {} bytes, not {SIZE}",
                    path.display(),
                    section.sh_size
                )));
            }
            let raw = self.memory().read_vec(section.address(mapped.base), SIZE)?;
            return AsyncioOffsets::parse(&raw).map(Some);
        }
        Ok(None)
    }
}

/// One read of the tasks.
struct Reader<'a> {
    py: &'a PyProcess,
    walker: Walker<'a>,
    a: AsyncioOffsets,
    o: ObjectOffsets,
    /// The text and awaiter slots read so far, against [`MAX_TEXT`] (a
    /// corrupt target's sets cannot make a read go on for gigabytes).
    text: usize,
}

impl Reader<'_> {
    fn read(&mut self) -> Result<AsyncTasks, Pep768Error> {
        let memory = self.py.memory();
        let offsets = self.py.offsets();
        let mut tasks = AsyncTasks::new(self.py.pid());
        let mut interp =
            memory.read_u64(at(self.py.runtime_address(), offsets.interpreters_head))?;
        let mut interpreters = Vec::new();
        while interp != 0 {
            if interpreters.len() >= MAX_INTERPRETERS {
                return Err(corrupt("the list of interpreters does not end"));
            }
            interpreters.push(interp);
            interp = memory.read_u64(at(interp, offsets.interp.next))?;
        }
        // The main interpreter (the oldest) first.
        for &interp in interpreters.iter().rev() {
            let mut tstate = memory.read_u64(at(interp, offsets.interp.threads_head))?;
            let mut threads = Vec::new();
            while tstate != 0 {
                if threads.len() >= MAX_THREADS {
                    return Err(corrupt("the list of threads does not end"));
                }
                threads.push(tstate);
                tstate = memory.read_u64(at(tstate, offsets.tstate.next))?;
            }
            // Newest first in CPython's list: the main thread first here.
            for &tstate in threads.iter().rev() {
                let tid = memory.read_u64(at(tstate, offsets.tstate.native_thread_id))?;
                let running = memory.read_u64(at(tstate, self.a.running_loop))? & !TAG_BITS;
                if running != 0 {
                    tasks.running_loops.push(tid);
                }
                if self.list(at(tstate, self.a.tstate_tasks_head), tid, &mut tasks)? {
                    return Ok(tasks);
                }
            }
            if self.list(at(interp, self.a.interp_tasks_head), 0, &mut tasks)? {
                return Ok(tasks);
            }
        }
        Ok(tasks)
    }

    /// Appends the tasks of the list headed at `head`, of thread `tid`;
    /// true when a bound was reached (and [`note`](AsyncTasks::note) says
    /// which).
    fn list(&mut self, head: u64, tid: u64, tasks: &mut AsyncTasks) -> Result<bool, Pep768Error> {
        let memory = self.py.memory();
        let link = self.o.llist_next;
        let next_of = |node: u64| memory.read_u64(at(node, link));
        let mut node = next_of(head)?;
        let mut seen = HashSet::new();
        while node != head {
            if node == 0 {
                return Err(corrupt("a task list is broken (a null link)"));
            }
            // A list that loops without its head: a task freed meanwhile.
            if !seen.insert(node) {
                return Err(corrupt("a task list loops"));
            }
            if tasks.tasks.len() >= MAX_TASKS {
                tasks.note = Some(format!(
                    "cut: more than {MAX_TASKS} tasks; the rest left out"
                ));
                return Ok(true);
            }
            let task = node.wrapping_sub(self.a.task_node);
            let read = self.task(task, tid)?;
            tasks.tasks.push(read);
            if self.text > MAX_TEXT {
                tasks.note = Some(format!(
                    "cut: a read holds at most {MAX_TEXT} bytes of names and awaiter sets; later tasks left out"
                ));
                return Ok(true);
            }
            node = next_of(node)?;
        }
        Ok(false)
    }

    /// The task at `addr`, of thread `tid`.
    fn task(&mut self, addr: u64, tid: u64) -> Result<AsyncTask, Pep768Error> {
        let a = self.a;
        let raw = self.py.memory().read_vec(addr, a.task_size as usize)?;
        let word = |at: u64| le64(&raw, at as usize);
        let name = self.name(word(a.task_name) & !TAG_BITS)?;
        let mut task = AsyncTask::new(addr, name);
        task.thread_id = tid;
        let coro = word(a.task_coro) & !TAG_BITS;
        if coro != 0 {
            task.coroutine_stack = self.coroutine_stack(coro)?;
        }
        let awaited_by = word(a.task_awaited_by) & !TAG_BITS;
        if awaited_by != 0 {
            task.awaited_by = match raw[a.task_awaited_by_is_set as usize] {
                0 => vec![awaited_by],
                _ => self.set_members(awaited_by)?,
            };
        }
        self.text += task.name.len()
            + task
                .coroutine_stack
                .iter()
                .map(|frame| frame.function.len() + frame.file.len() + 32)
                .sum::<usize>()
            + 16 * task.awaited_by.len();
        Ok(task)
    }

    /// A task's name: a `str`, or an `int` `n` (a task not named, whose
    /// name is `Task-<n>` until asked for).
    fn name(&mut self, object: u64) -> Result<String, Pep768Error> {
        let memory = self.py.memory();
        let offsets = self.py.offsets();
        let ty = memory.read_u64(at(object, offsets.ob_type))?;
        let flags = memory.read_u64(at(ty, self.o.tp_flags))?;
        if flags & UNICODE_SUBCLASS != 0 {
            return Ok(self.walker.string(object)?.to_string());
        }
        if flags & LONG_SUBCLASS == 0 {
            return Err(corrupt(&format!(
                "a task's name at {object:#x} is neither a str nor an int"
            )));
        }
        let raw = memory.read_vec(object, self.o.long_size as usize)?;
        let tag = le64(&raw, self.o.lv_tag as usize);
        let digits = tag >> 3;
        if digits > 2 {
            return Err(corrupt(&format!("a task's number of {digits} digits")));
        }
        let digits = memory.read_vec(at(object, self.o.ob_digit), 4 * digits as usize)?;
        let value = digits.chunks_exact(4).rev().fold(0u64, |value, digit| {
            (value << 30) | u64::from(u32::from_le_bytes(digit.try_into().expect("4")))
        });
        let sign = if tag & 3 == 2 { "-" } else { "" };
        Ok(format!("Task-{sign}{value}"))
    }

    /// The coroutine stack from coroutine `coro`, outermost first.
    fn coroutine_stack(&mut self, mut coro: u64) -> Result<Vec<Frame>, Pep768Error> {
        let memory = self.py.memory();
        let offsets = *self.py.offsets();
        let f = offsets.frame;
        let mut frames = Vec::new();
        for _ in 0..MAX_CHAIN {
            let gen = memory.read_vec(coro, self.o.gen_size as usize)?;
            let gen_type = le64(&gen, offsets.ob_type as usize);
            let state = gen[self.o.gi_frame_state as usize] as i8;
            let iframe = &gen[self.o.gi_iframe as usize..(self.o.gi_iframe + f.size) as usize];
            let executable = le64(iframe, f.executable as usize) & !TAG_BITS;
            let owner = iframe[f.owner as usize];
            if executable != 0 && owner < OWNED_BY_INTERPRETER {
                let code = self.walker.code(executable)?;
                let line = code.line_at(le64(iframe, f.instr_ptr as usize));
                frames.push(Frame::new(
                    code.qualname.clone(),
                    code.filename.clone(),
                    line,
                ));
            }
            if state != FRAME_SUSPENDED_YIELD_FROM || owner != OWNED_BY_GENERATOR {
                return Ok(frames);
            }
            // What it awaits: the top of its frame's value stack.
            let top = le64(iframe, self.o.stackpointer as usize) & !TAG_BITS;
            if top == 0 {
                return Ok(frames);
            }
            let awaited = memory.read_u64(top.wrapping_sub(8))? & !TAG_BITS;
            if awaited == 0 || memory.read_u64(at(awaited, offsets.ob_type))? != gen_type {
                // A future, a task, an iterator: the chain of coroutines
                // ends here.
                return Ok(frames);
            }
            coro = awaited;
        }
        Err(corrupt(&format!(
            "a chain of more than {MAX_CHAIN} coroutines"
        )))
    }

    /// The members of the `set` at `set` (its live slots, at most
    /// [`MAX_AWAITERS`]).
    fn set_members(&mut self, set: u64) -> Result<Vec<u64>, Pep768Error> {
        let memory = self.py.memory();
        let raw = memory.read_vec(set, self.o.set_size as usize)?;
        let used = le64(&raw, self.o.set_used as usize);
        let mask = le64(&raw, self.o.set_mask as usize);
        let table = le64(&raw, self.o.set_table as usize);
        let slots = mask.wrapping_add(1);
        if !slots.is_power_of_two() || slots > MAX_AWAITERS as u64 || used > slots {
            return Err(corrupt(&format!(
                "a set of awaiters with {slots} slots and {used} members"
            )));
        }
        // Slots of a key and its hash; a free slot has no key, a dummy
        // (a removed key) the hash -1. They count against the read's
        // budget, text or not.
        self.text += 16 * slots as usize;
        let entries = memory.read_vec(table, 16 * slots as usize)?;
        Ok(entries
            .chunks_exact(16)
            .filter(|entry| le64(entry, 0) != 0 && le64(entry, 8) != u64::MAX)
            .map(|entry| le64(entry, 0) & !TAG_BITS)
            .take(used as usize)
            .collect())
    }
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn corrupt(what: &str) -> Pep768Error {
    Pep768Error::new(
        Pep768ErrorKind::Corrupt,
        format!("inconsistent asyncio tasks: {what} (the target changed them while read?)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(words: [u64; 13]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The values of Debian's CPython 3.14 (`readelf -x .AsyncioDebug`).
    const REAL: [u64; 13] = [
        0xa8, 0x88, 0x60, 0x6c, 0x6d, 0x80, 0x98, 0x37248, 0x2a80, 0x3a8, 0x360, 0x368, 0x370,
    ];

    #[test]
    fn parses_consistent_offsets_and_refuses_others_without_panicking() {
        let o = AsyncioOffsets::parse(&section(REAL)).unwrap();
        assert_eq!((o.task_name, o.task_node), (0x88, 0x98));
        for len in 0..SIZE {
            assert!(AsyncioOffsets::parse(&section(REAL)[..len]).is_err());
        }
        for i in 0..13 {
            for value in [0, u64::MAX, 1 << 40] {
                let mut words = REAL;
                words[i] = value;
                let _ = AsyncioOffsets::parse(&section(words));
            }
        }
        let mut words = REAL;
        words[6] = 0xa0; // task_node past the end of TaskObj
        let err = AsyncioOffsets::parse(&section(words)).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::Corrupt);
        assert!(err.to_string().contains("task_node"), "{err}");
    }
}
