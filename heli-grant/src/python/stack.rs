//! Read-only stack dumps: interpreters, their thread states, each thread's
//! chain of interpreter frames, and the code objects they run, read from
//! the target's memory while it runs.
//!
//! Nothing runs in the target and it is never stopped, so a thread may
//! change its stack while it is read. To keep the window small, a thread's
//! frames are copied in one read where they lie together: from the start
//! of its newest data-stack chunk (`thread_state.datastack_chunk`) to the
//! end of its current frame. Frames elsewhere (generators, entry frames on
//! the C stack, older chunks) are read one by one. A walk that meets a
//! frame being set up or cleared, a pointer leading nowhere, or whose
//! thread's current frame changed meanwhile, is retried.
//!
//! Each thread is a [`heli_core::stacks::ThreadStack`] (the one type for a
//! thread's stack from the reader to the client): besides its frames, its
//! name and whether it was on a CPU come from `/proc/PID/task/TID`, and
//! whether it held the GIL from the interpreter's GIL (`locked` and
//! `last_holder`, where the debug offsets place them).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use heli_core::stacks::{Activity, Frame, ThreadStack};
use heli_core::{Pid, ProcessState};
use heli_proc::Proc;

use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::at;
use super::offsets::Offsets;
use super::process::{PyProcess, MAX_INTERPRETERS};

/// What `frame` counts for in [`MAX_DUMP_TEXT`].
fn frame_text(frame: &Frame) -> usize {
    frame.function.len() + frame.file.len() + FRAME_TEXT
}

/// How often a thread's walk, or the whole dump, is tried.
const ATTEMPTS: usize = 3;
/// At most this many frames per thread, threads per interpreter.
const MAX_DEPTH: usize = 1 << 16;
const MAX_THREADS: usize = 1 << 16;
/// Strings and line tables longer than this are taken for garbage.
const MAX_STRING: usize = 1 << 20;
/// The most read at once to copy a thread's frames.
const MAX_BLOCK: u64 = 1 << 20;
/// The most text (names and file names) one dump holds: the target decides
/// how many threads and frames there are and how long their names are
/// (65,536 threads of 65,536 frames, names of a MiB), and all of it would
/// be copied here. 8 MiB is twice what a `STACK` reply carries.
pub const MAX_DUMP_TEXT: usize = 8 << 20;
/// What a frame's line costs besides its names.
const FRAME_TEXT: usize = 32;
/// The most one dump reads of frames, in bytes: each frame walked counts
/// its size (one taken from a block read at once too), and each block its
/// own. The target decides where its frames and thread states point: a
/// frame without code that is its own caller, in a thread state that is
/// its own next (measured: a few lines of `ctypes`), had the walks go on
/// to 65,536 frames in each of 65,536 threads, three times over, hours of
/// a controller's core for one `STACK`, and a profile that never ended.
/// Past this the frames left are not read, and their threads say so; a
/// real dump comes nowhere near it: its text alone stops at
/// [`MAX_DUMP_TEXT`], at most 262,144 frames with code.
const MAX_DUMP_READ: u64 = 64 << 20;
/// The part of [`MAX_DUMP_TEXT`] kept for main threads: threads are read
/// newest first (as CPython lists them), and the main thread, the oldest,
/// must not find nothing left.
const MAIN_RESERVE: usize = 1 << 20;
/// How much is read at once at a string's address, in the hope that the
/// whole string is there.
const STRING_PREFETCH: usize = 256;
/// `_PyStackRef` tag bits (the reference-count tag and its neighbour).
const TAG_BITS: u64 = 0b11;
/// `_frameowner` values: 3.14's thread, generator, frame object; 3
/// (interpreter) and 4 (C stack) mark frames without Python code.
const OWNED_BY_FRAME_OBJECT: u8 = 2;
const OWNED_BY_CSTACK: u8 = 4;

/// Every thread's Python stack in process `pid`: [`PyProcess::open`] then
/// [`PyProcess::stack_dump`].
///
/// # Errors
///
/// As those two.
///
/// # Examples
///
/// ```no_run
/// use heli_core::stacks::threads_text;
/// use heli_core::Pid;
///
/// let threads = heli_grant::stack_dump(Pid::new(4242).unwrap())?;
/// // Like a traceback, most recent call last, each thread under a header
/// // such as `Thread 4242 "python3" (main) [running, holds the GIL]`.
/// print!("{}", threads_text(&threads));
/// let busy = threads.iter().filter(|thread| thread.gil == Some(true)).count();
/// assert!(busy <= 1, "one thread at most holds a GIL");
/// # Ok::<(), heli_grant::Pep768Error>(())
/// ```
pub fn stack_dump(pid: Pid) -> Result<Vec<ThreadStack>, Pep768Error> {
    PyProcess::open(pid)?.stack_dump()
}

impl PyProcess {
    /// Every thread's Python stack, read from the target's memory while it
    /// runs: the main interpreter's threads first, each interpreter's
    /// oldest thread first.
    ///
    /// Nothing is executed in the target and it is not stopped. A thread
    /// whose stack changed while it was read is read again (up to three
    /// times; see [`ThreadStack::incomplete`]). The names and file names of
    /// the frames come to [`MAX_DUMP_TEXT`] bytes at most: past it, a
    /// thread keeps its most recent calls that fit, and the threads read
    /// after it (older ones; each interpreter's main thread has 1 MiB kept
    /// for it) are listed without frames, each saying so. Its walks read
    /// 64 MiB of frames at most (a target's frames can be made to loop,
    /// or to go on for millions; a real dump stops at its text first):
    /// past that, the threads not yet read say so instead of their frames;
    /// a list of threads that comes back to one it listed is
    /// [`Corrupt`](Pep768ErrorKind::Corrupt).
    ///
    /// Each thread also says, as read at that moment:
    /// [`name`](ThreadStack::name) (`/proc/PID/task/TID/comm`: what
    /// `threading` sets, cut to 15 bytes); [`activity`](ThreadStack::activity):
    /// [`Running`](Activity::Running) when the kernel has it on a CPU or
    /// ready to run (`R`), [`Idle`](Activity::Idle) otherwise (asleep in a
    /// system call, waiting for a lock or for the GIL);
    /// [`gil`](ThreadStack::gil): whether it held its interpreter's GIL
    /// (the GIL is locked and its `last_holder` is this thread's state).
    /// These are `None` when they could not be read (a thread that exited
    /// meanwhile, debug offsets that do not place the GIL).
    ///
    /// # Errors
    ///
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess) when it exited
    /// (before or while its stacks were read: a dump is returned only if
    /// the process still ran after it, so that all it read was that
    /// process's), and when it has run another program since it was
    /// opened (`execve`: its runtime is no longer where it was found);
    /// [`Corrupt`](Pep768ErrorKind::Corrupt) when its list of threads kept
    /// changing (or is corrupt) three times in a row;
    /// [`PermissionDenied`](Pep768ErrorKind::PermissionDenied).
    pub fn stack_dump(&self) -> Result<Vec<ThreadStack>, Pep768Error> {
        let mut attempt = 0;
        let threads = loop {
            let mut walker = Walker::new(self);
            match walker.dump() {
                Err(err) if err.kind() == Pep768ErrorKind::Corrupt && attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                }
                result => break result?,
            }
        };
        // Memory is read by pid: still running now, it ran all along, and
        // the pid named no other process meanwhile.
        if !self.is_running()? {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NoSuchProcess,
                format!("PID {} exited while its stacks were read", self.pid()),
            ));
        }
        // A handle kept from one dump to the next (a profile's) outlives
        // an `execve`, after which the runtime it found is not there.
        if !self.same_runtime()? {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NoSuchProcess,
                format!(
                    "PID {} has run another program (execve) since it was opened: \
                     the Python runtime it had is gone; open it again",
                    self.pid()
                ),
            ));
        }
        Ok(threads)
    }
}

/// A code object's parts that do not change.
#[derive(Debug)]
pub(super) struct Code {
    pub(super) qualname: String,
    pub(super) filename: String,
    linetable: Vec<u8>,
    firstlineno: i32,
    /// Where its bytecode (`co_code_adaptive`) starts.
    bytecode: u64,
}

/// Who held an interpreter's GIL when it was read.
#[derive(Clone, Copy, Debug)]
struct Gil {
    locked: bool,
    /// The thread state that holds it, or held it last.
    holder: u64,
}

impl Gil {
    /// Whether thread state `tstate` holds it.
    fn held_by(self, tstate: u64) -> bool {
        self.locked && self.holder == tstate
    }
}

/// One dump's reads, with what it learnt on the way (the asyncio reader's
/// too: code objects and strings are read here and nowhere else).
pub(super) struct Walker<'a> {
    py: &'a PyProcess,
    o: &'a Offsets,
    /// The target's `/proc` directory: its threads' names and states.
    proc: &'a Proc,
    codes: HashMap<u64, Rc<Code>>,
    strings: HashMap<u64, Rc<str>>,
    /// Type objects known to be, or not to be, `code`.
    code_types: HashMap<u64, bool>,
    /// What is left of [`MAX_DUMP_TEXT`].
    text_left: usize,
    /// What is left of [`MAX_DUMP_READ`].
    read_left: u64,
}

impl<'a> Walker<'a> {
    pub(super) fn new(py: &'a PyProcess) -> Walker<'a> {
        Walker {
            py,
            o: py.offsets(),
            proc: py.proc(),
            codes: HashMap::new(),
            strings: HashMap::new(),
            code_types: HashMap::new(),
            text_left: MAX_DUMP_TEXT,
            read_left: MAX_DUMP_READ,
        }
    }

    fn dump(&mut self) -> Result<Vec<ThreadStack>, Pep768Error> {
        let memory = self.py.memory();
        let mut interp =
            memory.read_u64(at(self.py.runtime_address(), self.o.interpreters_head))?;
        let mut interpreters = Vec::new();
        while interp != 0 {
            if interpreters.len() >= MAX_INTERPRETERS {
                return Err(corrupt("the list of interpreters does not end"));
            }
            let i = &self.o.interp;
            let id = memory.read_u64(at(interp, i.id))?;
            let next = memory.read_u64(at(interp, i.next))?;
            let main = memory.read_u64(at(interp, i.threads_main))?;
            let mut tstate = memory.read_u64(at(interp, i.threads_head))?;
            let gil = self.gil(interp);
            let mut threads = Vec::new();
            let mut seen = HashSet::new();
            while tstate != 0 {
                if threads.len() >= MAX_THREADS {
                    return Err(corrupt("the list of threads does not end"));
                }
                if !seen.insert(tstate) {
                    return Err(corrupt(&format!(
                        "the list of threads loops (back to {tstate:#x})"
                    )));
                }
                let (thread, next) = self.thread(tstate, id, tstate == main, gil)?;
                threads.push(thread);
                tstate = next;
            }
            // Newest first in CPython's lists.
            threads.reverse();
            interpreters.push(threads);
            interp = next;
        }
        interpreters.reverse();
        Ok(interpreters.into_iter().flatten().collect())
    }

    /// The state of the GIL that interpreter `interp` uses (its own, or
    /// the main interpreter's it shares); `None` when the offsets do not
    /// tell or it cannot be read.
    fn gil(&self, interp: u64) -> Option<Gil> {
        let g = self.o.gil?;
        let memory = self.py.memory();
        let gil = memory.read_u64(at(interp, g.ceval_gil)).ok()?;
        if gil == 0 {
            return None;
        }
        // Both fields in one read, as close together in time as can be.
        let raw = memory.read_vec(gil, g.span() as usize).ok()?;
        let locked = i32::from_le_bytes(
            raw[g.locked as usize..g.locked as usize + 4]
                .try_into()
                .expect("4 bytes"),
        );
        Some(Gil {
            locked: locked == 1,
            holder: le64(&raw, g.holder as usize),
        })
    }

    /// Thread state `tstate`'s stack, and the next thread state.
    fn thread(
        &mut self,
        tstate: u64,
        interpreter_id: u64,
        main: bool,
        gil: Option<Gil>,
    ) -> Result<(ThreadStack, u64), Pep768Error> {
        let t = &self.o.tstate;
        let need = [
            t.next,
            t.current_frame,
            t.thread_id,
            t.native_thread_id,
            t.datastack_chunk,
        ]
        .into_iter()
        .max()
        .expect("five offsets")
            + 8;
        let raw = self.py.memory().read_vec(tstate, need as usize)?;
        let word = |at: u64| le64(&raw, at as usize);
        let native_thread_id = word(t.native_thread_id);
        let mut frame = word(t.current_frame);
        let mut chunk = word(t.datastack_chunk);
        let mut stack = ThreadStack::new(native_thread_id);
        stack.thread_id = word(t.thread_id);
        stack.interpreter_id = interpreter_id;
        stack.main = main;
        stack.gil = gil.map(|gil| gil.held_by(tstate));
        let proc = self.proc;
        let tid = u32::try_from(native_thread_id).ok().and_then(Pid::new);
        stack.name = proc.thread_name(native_thread_id);
        stack.activity = match tid.map(|tid| proc.thread_state(tid)) {
            Some(Ok(Some(ProcessState::Running))) => Some(Activity::Running),
            Some(Ok(Some(state))) if !state.is_gone() => Some(Activity::Idle),
            _ => None,
        };
        let limit = match main {
            true => self.text_left,
            false => self.text_left.saturating_sub(MAIN_RESERVE),
        };
        for attempt in 1..=ATTEMPTS {
            let walked = self.frames(frame, chunk, limit);
            let now = self.py.memory().read_u64(at(tstate, t.current_frame))?;
            match walked {
                Ok((frames, cut)) => {
                    stack.frames = frames;
                    stack.incomplete = cut.then(|| {
                        format!(
                            "cut: a dump holds at most {MAX_DUMP_TEXT} bytes of names; \
                             older calls are left out"
                        )
                    });
                    if now == frame {
                        break;
                    }
                }
                Err((frames, err)) => {
                    stack.frames = frames;
                    stack.incomplete = Some(err.to_string());
                    if attempt == ATTEMPTS && err.kind() != Pep768ErrorKind::Corrupt {
                        return Err(err);
                    }
                }
            }
            frame = now;
            chunk = self.py.memory().read_u64(at(tstate, t.datastack_chunk))?;
        }
        let spent: usize = stack.frames.iter().map(frame_text).sum();
        self.text_left = self.text_left.saturating_sub(spent);
        Ok((stack, word(t.next)))
    }

    /// The frames from `frame` outwards, outermost first, and whether they
    /// were cut short at `limit` bytes of text (see [`MAX_DUMP_TEXT`]); on
    /// an error, the ones read so far. `chunk` is the thread's newest
    /// data-stack chunk.
    fn frames(
        &mut self,
        mut frame: u64,
        chunk: u64,
        limit: usize,
    ) -> Result<(Vec<Frame>, bool), (Vec<Frame>, Pep768Error)> {
        if limit < FRAME_TEXT {
            // No room for a frame: nothing more is read.
            return Ok((Vec::new(), true));
        }
        let mut text = 0;
        let f = self.o.frame;
        let size = f.size;
        // The chunk's frames, up to the current one, in one read.
        let span = frame
            .checked_sub(chunk)
            .and_then(|before| before.checked_add(size))
            .filter(|&span| chunk != 0 && span <= MAX_BLOCK && span <= self.read_left);
        let block = span.and_then(|span| {
            self.read_left -= span;
            self.py.memory().read_vec(chunk, span as usize).ok()
        });
        let mut single = vec![0u8; size as usize];
        let mut frames = Vec::new();
        let mut depth = 0;
        while frame != 0 {
            depth += 1;
            let in_block = block.as_ref().and_then(|block| {
                let start = usize::try_from(frame.checked_sub(chunk)?).ok()?;
                block.get(start..start.checked_add(size as usize)?)
            });
            let result = if depth > MAX_DEPTH {
                Err(corrupt(&format!("more than {MAX_DEPTH} frames")))
            } else if self.read_left < size {
                Err(corrupt(&format!(
                    "the dump's frames come to more than {} MiB: a chain of frames that \
                     loops?",
                    MAX_DUMP_READ >> 20
                )))
            } else if let Some(bytes) = in_block {
                Ok(bytes)
            } else {
                self.py
                    .memory()
                    .read(frame, &mut single)
                    .map(|()| &single[..])
            };
            self.read_left = self.read_left.saturating_sub(size);
            let buf = match result {
                Ok(buf) => buf,
                Err(err) => {
                    frames.reverse();
                    return Err((frames, err));
                }
            };
            let previous = le64(buf, f.previous as usize);
            let executable = le64(buf, f.executable as usize) & !TAG_BITS;
            let owner = buf[f.owner as usize];
            let instr_ptr = le64(buf, f.instr_ptr as usize);
            // The newest frames may be ones being cleared as their
            // functions return (the current frame read a moment earlier
            // was one of them), or one being set up for a call: skip them;
            // a cleared frame keeps its link to its caller. Past a frame
            // with code, a frame without means the copy is torn.
            let leading = frames.is_empty();
            if owner > OWNED_BY_CSTACK
                || (owner <= OWNED_BY_FRAME_OBJECT && executable == 0 && !leading)
            {
                frames.reverse();
                let err = corrupt(&format!(
                    "the frame at {frame:#x} (owner {owner}) has no code"
                ));
                return Err((frames, err));
            }
            frame = previous;
            if owner > OWNED_BY_FRAME_OBJECT || executable == 0 {
                // The interpreter's own entry frames, C stack frames.
                continue;
            }
            match self.code(executable) {
                Ok(code) => {
                    let read = Frame::new(
                        code.qualname.clone(),
                        code.filename.clone(),
                        code.line_at(instr_ptr),
                    );
                    text += frame_text(&read);
                    if text > limit {
                        frames.reverse();
                        return Ok((frames, true));
                    }
                    frames.push(read);
                }
                Err(err) => {
                    frames.reverse();
                    return Err((frames, err));
                }
            }
        }
        frames.reverse();
        Ok((frames, false))
    }

    pub(super) fn code(&mut self, addr: u64) -> Result<Rc<Code>, Pep768Error> {
        if let Some(code) = self.codes.get(&addr) {
            return Ok(code.clone());
        }
        let c = self.o.code;
        let raw = self.py.memory().read_vec(addr, c.size as usize)?;
        let word = |at: u64| le64(&raw, at as usize);
        if !self.is_code_type(word(self.o.ob_type))? {
            return Err(corrupt(&format!("{addr:#x} is not a code object")));
        }
        let firstlineno = &raw[c.firstlineno as usize..c.firstlineno as usize + 4];
        let code = Rc::new(Code {
            qualname: self.string(word(c.qualname))?.to_string(),
            filename: self.string(word(c.filename))?.to_string(),
            linetable: self.bytes(word(c.linetable))?,
            firstlineno: i32::from_le_bytes(firstlineno.try_into().expect("4 bytes")),
            bytecode: at(addr, c.co_code_adaptive),
        });
        self.codes.insert(addr, code.clone());
        Ok(code)
    }

    /// Whether type object `ty` is the one named `code`.
    fn is_code_type(&mut self, ty: u64) -> Result<bool, Pep768Error> {
        if let Some(&known) = self.code_types.get(&ty) {
            return Ok(known);
        }
        let memory = self.py.memory();
        let name = memory.read_u64(at(ty, self.o.tp_name))?;
        let mut text = [0u8; 5];
        memory.read(name, &mut text)?;
        let is_code = &text == b"code\0";
        self.code_types.insert(ty, is_code);
        Ok(is_code)
    }

    /// A `str` object's text.
    pub(super) fn string(&mut self, addr: u64) -> Result<Rc<str>, Pep768Error> {
        if let Some(text) = self.strings.get(&addr) {
            return Ok(text.clone());
        }
        let u = self.o.unicode;
        let head = self.prefetch(addr, u.asciiobject_size as usize)?;
        let length = le64(&head, u.length as usize);
        let state = u32::from_le_bytes(
            head[u.state as usize..u.state as usize + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let kind = ((state >> 2) & 7) as usize;
        let compact = state & (1 << 5) != 0;
        let ascii = state & (1 << 6) != 0;
        if length > MAX_STRING as u64 || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
            return Err(corrupt(&format!(
                "{addr:#x} is not a str (length {length}, state {state:#x})"
            )));
        }
        let size = length as usize * kind;
        // Compact strings hold their characters after the header: an
        // ASCII one right after PyASCIIObject, others after
        // PyCompactUnicodeObject (PyUnicodeObject less its data pointer).
        let data_offset = if ascii {
            u.asciiobject_size
        } else {
            u.size - 8
        };
        let data = if !compact {
            let pointer = self.py.memory().read_u64(at(addr, u.size - 8))?;
            self.py.memory().read_vec(pointer, size)?
        } else if data_offset as usize + size <= head.len() {
            head[data_offset as usize..data_offset as usize + size].to_vec()
        } else {
            self.py.memory().read_vec(at(addr, data_offset), size)?
        };
        let text: String = match kind {
            1 => data.iter().map(|&b| char::from(b)).collect(),
            2 => data
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
            _ => data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        };
        let text: Rc<str> = text.into();
        self.strings.insert(addr, text.clone());
        Ok(text)
    }

    /// A `bytes` object's contents.
    fn bytes(&mut self, addr: u64) -> Result<Vec<u8>, Pep768Error> {
        let b = self.o.bytes;
        let head = self.prefetch(addr, b.ob_sval as usize)?;
        let length = le64(&head, b.ob_size as usize);
        if length > MAX_STRING as u64 {
            return Err(corrupt(&format!(
                "{addr:#x} is not a bytes (length {length})"
            )));
        }
        let (start, end) = (b.ob_sval as usize, b.ob_sval as usize + length as usize);
        if end <= head.len() {
            Ok(head[start..end].to_vec())
        } else {
            self.py
                .memory()
                .read_vec(at(addr, b.ob_sval), length as usize)
        }
    }

    /// [`STRING_PREFETCH`] bytes at `addr`, or at least `min` of them when
    /// fewer are mapped.
    fn prefetch(&self, addr: u64, min: usize) -> Result<Vec<u8>, Pep768Error> {
        let memory = self.py.memory();
        memory
            .read_vec(addr, STRING_PREFETCH.max(min))
            .or_else(|_| memory.read_vec(addr, min))
    }
}

impl Code {
    /// The line of the instruction at `instr_ptr`.
    pub(super) fn line_at(&self, instr_ptr: u64) -> Option<u32> {
        let line = if instr_ptr < self.bytecode {
            Some(self.firstlineno)
        } else {
            // In code units (2 bytes).
            line_for(
                &self.linetable,
                self.firstlineno,
                (instr_ptr - self.bytecode) / 2,
            )
        };
        line.and_then(|line| u32::try_from(line).ok())
    }
}

/// The line of code unit `unit` by the location table `table` (format of
/// CPython 3.11 and later, `Objects/locations.md`): entries of a first byte
/// `1cccclll` (code `cccc`, `lll + 1` code units) and, by code, varints or
/// column bytes; the line is a running sum from `firstlineno`. `None` for a
/// unit without a line or past the table; never panics on garbage.
pub(crate) fn line_for(table: &[u8], firstlineno: i32, unit: u64) -> Option<i32> {
    let mut bytes = table.iter().copied();
    let mut line = i64::from(firstlineno);
    let mut start = 0u64;
    let mut entries = 0;
    while let Some(first) = bytes.next() {
        entries += 1;
        if first & 0x80 == 0 || entries > 1 << 20 {
            return None;
        }
        let code = (first >> 3) & 15;
        let end = start + u64::from(first & 7) + 1;
        let mut this_line = Some(line);
        match code {
            // No location.
            15 => this_line = None,
            // Long form: line delta, end line delta, columns.
            14 => {
                line += signed_varint(&mut bytes)?;
                this_line = Some(line);
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
            }
            // No columns: line delta.
            13 => {
                line += signed_varint(&mut bytes)?;
                this_line = Some(line);
            }
            // One line: delta 0, 1 or 2, then two column bytes.
            10..=12 => {
                line += i64::from(code - 10);
                this_line = Some(line);
                bytes.next()?;
                bytes.next()?;
            }
            // Short form: same line, one column byte.
            _ => {
                bytes.next()?;
            }
        }
        if unit < end {
            return this_line.and_then(|line| i32::try_from(line).ok());
        }
        start = end;
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut byte = bytes.next()?;
    let mut value = u64::from(byte & 63);
    let mut shift = 0;
    while byte & 64 != 0 {
        byte = bytes.next()?;
        shift += 6;
        if shift > 56 {
            return None;
        }
        value |= u64::from(byte & 63) << shift;
    }
    Some(value)
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn corrupt(what: &str) -> Pep768Error {
    Pep768Error::new(
        Pep768ErrorKind::Corrupt,
        format!("inconsistent stack: {what} (the target changed it while it was read?)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::test_python::Target;

    #[test]
    fn decodes_varints() {
        assert_eq!(varint(&mut [5u8].into_iter()), Some(5));
        assert_eq!(varint(&mut [0x41u8, 0x02].into_iter()), Some(1 | 2 << 6));
        assert_eq!(varint(&mut [0x41u8].into_iter()), None);
        assert_eq!(signed_varint(&mut [3u8].into_iter()), Some(-1));
        assert_eq!(signed_varint(&mut [4u8].into_iter()), Some(2));
        assert_eq!(varint(&mut std::iter::repeat(0x7f)), None);
    }

    #[test]
    fn garbage_tables_do_not_panic() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let table: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            for unit in [0, 1, 7, 100, u64::MAX] {
                let _ = line_for(&table, i32::MAX, unit);
                let _ = line_for(&table, i32::MIN, unit);
            }
        }
    }

    /// A target that makes its stacks endless, through `ctypes`: a thread
    /// blocked in C whose current frame is a frame without code (C stack)
    /// that is its own caller, followed in the list of threads by
    /// `COPIES` copies of its thread state, the last one followed by the
    /// main thread (as the blocked thread was), or, with `LOOPS`, by the
    /// blocked thread again.
    const ENDLESS: &str = r#"
import ctypes, threading, time
rt = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
def offset(at):
    return ctypes.c_uint64.from_address(rt + at).value
def put(address, value):
    ctypes.c_uint64.from_address(address).value = value
ctypes.pythonapi.PyThreadState_Get.restype = ctypes.c_void_p
# _Py_DebugOffsets: thread_state.size, next, current_frame,
# datastack_chunk; interpreter_frame.previous, executable, owner.
SIZE, NEXT, CURRENT, CHUNK = offset(176), offset(192), offset(208), offset(232)
PREVIOUS, EXECUTABLE, OWNER = offset(256), offset(264), offset(288)
lock = threading.Lock()
lock.acquire()
states = []
def blocked():
    states.append(ctypes.pythonapi.PyThreadState_Get())
    lock.acquire()
threading.Thread(target=blocked, daemon=True).start()
while not states:
    time.sleep(0.01)
time.sleep(0.1)
frame = ctypes.create_string_buffer(4096)
address = ctypes.addressof(frame)
put(address + PREVIOUS, address)
put(address + EXECUTABLE, 0)
ctypes.c_uint8.from_address(address + OWNER).value = 4
state = states[0]
after = ctypes.c_uint64.from_address(state + NEXT).value
put(state + CHUNK, 0)
put(state + CURRENT, address)
copies = [ctypes.create_string_buffer(ctypes.string_at(state, SIZE), SIZE) for _ in range(COPIES)]
chain = [state] + [ctypes.addressof(copy) for copy in copies]
for this, following in zip(chain, chain[1:]):
    put(this + NEXT, following)
put(chain[-1] + NEXT, chain[0] if LOOPS else after)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"#;

    /// The dump of `ENDLESS` with `copies` and `loops`, in 2 minutes at
    /// most.
    fn dump_endless(copies: usize, loops: bool) -> Result<Vec<ThreadStack>, Pep768Error> {
        let code = ENDLESS
            .replace("COPIES", &copies.to_string())
            .replace("LOOPS", if loops { "True" } else { "False" });
        let mut target = Target::start(&code);
        assert_eq!(target.line(), "ready\n");
        let python = PyProcess::open_id(target.id()).unwrap();
        let (done, dumped) = mpsc::channel();
        let started = Instant::now();
        // Unbounded, hours: the test ends with this thread still in it.
        thread::spawn(move || done.send(python.stack_dump()));
        let dump = dumped
            .recv_timeout(Duration::from_secs(120))
            .expect("the dump of endless stacks did not end in 2 minutes");
        eprintln!("dumped in {:?}", started.elapsed());
        dump
    }

    #[test]
    fn a_dump_of_a_list_of_threads_that_loops_ends_at_once() {
        let err = dump_endless(0, true).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::Corrupt, "{err}");
        assert!(
            err.to_string().contains("the list of threads loops"),
            "{err}"
        );
    }

    #[test]
    fn a_dump_reads_so_many_frames_and_no_more() {
        // 65,536 frames a walk, three walks a thread: without a bound,
        // 2,000 threads take a billion reads.
        let threads = dump_endless(2000, false).unwrap();
        assert_eq!(threads.len(), 2 + 2000, "{:?}", &threads[..3]);
        let cut = threads
            .iter()
            .filter(|thread| {
                thread
                    .incomplete
                    .as_deref()
                    .is_some_and(|why| why.contains("frames come to more than 64 MiB"))
            })
            .count();
        assert!(cut > 1900, "{cut} threads said the dump read enough");
        // The main thread, listed first, read last: nothing left for it.
        assert!(threads[0].main);
    }

    /// Every instruction's line of real code objects, as CPython 3.14 says
    /// (`co_lines`), against ours from their `co_linetable`.
    #[test]
    fn lines_match_cpython() {
        let python = crate::test_python::python314();
        let script = r#"
import dis, json, inspect, textwrap, collections
def samples():
    def f(a, b=2, *args, **kw):
        x = [i * 2 for i in range(a)]
        try:
            y = {k: v for k, v in kw.items()}
        except Exception as e:
            raise ValueError(
                "multi", "line") from e
        finally:
            pass
        while a > 0:
            a -= 1
            if a == 3: break
        else:
            return 0
        with open("/dev/null") as fh:
            pass
        return (x,
                y)
    yield f
    yield dis.dis
    yield json.dumps
    yield inspect.getsource
    yield textwrap.dedent
    yield collections.namedtuple
    yield json.decoder.JSONDecoder.raw_decode
out = []
for fn in samples():
    code = fn.__code__
    lines = []
    for start, end, line in code.co_lines():
        for unit in range(start // 2, end // 2):
            lines.append((unit, line))
    out.append({"table": code.co_linetable.hex(), "first": code.co_firstlineno, "lines": lines})
print(json.dumps(out))
"#;
        let output = Command::new(python).args(["-c", script]).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        // A tiny reader for the JSON above, without a JSON crate.
        let mut checked = 0;
        for object in text.split("{\"table\": \"").skip(1) {
            let (hex, rest) = object.split_once('"').unwrap();
            let table: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let first: i32 = rest
                .split_once("\"first\": ")
                .unwrap()
                .1
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let lines = rest.split_once("\"lines\": [").unwrap().1;
            let Some((lines, _)) = lines.split_once("]]") else {
                continue;
            };
            for pair in lines.split("], [") {
                let pair = pair.trim_start_matches('[');
                let (unit, line) = pair.split_once(", ").unwrap();
                let unit: u64 = unit.parse().unwrap();
                let expected = line.parse::<i32>().ok();
                assert_eq!(
                    line_for(&table, first, unit),
                    expected,
                    "unit {unit} of {hex}"
                );
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} instructions checked");
    }
}
