//! Python stacks read from a process's memory, as `STACK` shows them (text,
//! like a traceback) and `STACKS` sends them (JSON).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::process::Pid;
use crate::tree::Role;

/// One Python frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Frame {
    /// The function's qualified name (`co_qualname`: `Class.method`).
    pub function: String,
    /// The code object's file name (`co_filename`).
    pub file: String,
    /// The line being run; `None` for an instruction without a line.
    pub line: Option<u32>,
    /// The text of that line, when a reader of the file added it (the
    /// controller does not read source files; the client does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Frame {
    /// A frame of `function` in `file` at `line`, without its source text.
    pub fn new(function: impl Into<String>, file: impl Into<String>, line: Option<u32>) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line,
            source: None,
        }
    }
}

/// What a thread was doing when its stack was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Activity {
    /// On a CPU or ready to run (kernel state `R`).
    Running,
    /// Asleep or waiting (any other kernel state): blocked in a system call,
    /// on a lock, or waiting for the GIL.
    Idle,
}

/// One thread's Python stack, outermost call first.
///
/// Displays like a traceback, most recent call last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ThreadStack {
    /// The kernel's id of the thread, as in `/proc/PID/task`.
    pub native_thread_id: u64,
    /// Python's `threading.get_ident()`.
    pub thread_id: u64,
    /// Its name (`/proc/PID/task/TID/comm`), if the thread still runs.
    pub name: Option<String>,
    /// Its interpreter's id (0 for the main one).
    pub interpreter_id: u64,
    /// Whether it runs the interpreter's `__main__`.
    pub main: bool,
    /// What it was doing, when the reader could tell.
    pub activity: Option<Activity>,
    /// Whether it held the GIL, when the reader could tell (a build with
    /// a GIL, whose debug offsets show its holder).
    pub gil: Option<bool>,
    /// Its frames, outermost first.
    pub frames: Vec<Frame>,
    /// Why the frames stop early, if they do.
    pub incomplete: Option<String>,
}

impl ThreadStack {
    /// Thread `native_thread_id` with no frame and nothing else known.
    pub fn new(native_thread_id: u64) -> ThreadStack {
        ThreadStack {
            native_thread_id,
            thread_id: 0,
            name: None,
            interpreter_id: 0,
            main: false,
            activity: None,
            gil: None,
            frames: Vec::new(),
            incomplete: None,
        }
    }
}

impl fmt::Display for ThreadStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thread {}", self.native_thread_id)?;
        if let Some(name) = &self.name {
            write!(f, " \"{name}\"")?;
        }
        if self.main {
            f.write_str(" (main)")?;
        }
        if self.interpreter_id != 0 {
            write!(f, " (interpreter {})", self.interpreter_id)?;
        }
        match (self.activity, self.gil) {
            (_, Some(true)) => f.write_str(" [running, holds the GIL]")?,
            (Some(Activity::Running), _) => f.write_str(" [running]")?,
            (Some(Activity::Idle), _) => f.write_str(" [idle]")?,
            (None, _) => {}
        }
        f.write_str(", most recent call last:\n")?;
        for frame in &self.frames {
            write!(f, "  File \"{}\", ", frame.file)?;
            match frame.line {
                Some(line) => write!(f, "line {line}, ")?,
                None => f.write_str("line ?, ")?,
            }
            writeln!(f, "in {}", frame.function)?;
            if let Some(source) = frame.source.as_deref().map(str::trim) {
                if !source.is_empty() {
                    writeln!(f, "    {source}")?;
                }
            }
        }
        if self.frames.is_empty() {
            f.write_str("  (no Python frame)\n")?;
        }
        if let Some(why) = &self.incomplete {
            writeln!(f, "  (incomplete: {why})")?;
        }
        Ok(())
    }
}

/// One process's stacks, as `STACKS` sends them: every thread, or why
/// there are none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessStacks {
    /// The process.
    pub pid: Pid,
    /// Its parent.
    pub parent: Option<Pid>,
    /// Whether it is the target.
    pub target: bool,
    /// Its command line.
    pub command: String,
    /// The CPython version it runs, when known.
    pub python: Option<String>,
    /// Its threads' stacks.
    pub threads: Vec<ThreadStack>,
    /// Why its stacks were not read (not a Python process, gone...).
    pub skipped: Option<String>,
}

impl ProcessStacks {
    /// Process `pid` with no stack and nothing else known.
    pub fn new(pid: Pid) -> ProcessStacks {
        ProcessStacks {
            pid,
            parent: None,
            target: false,
            command: String::new(),
            python: None,
            threads: Vec::new(),
            skipped: None,
        }
    }

    /// Its role in the tree: [`Role::Target`], or [`Role::ChildOf`] its
    /// parent; `None` for a process that is not the target and whose
    /// parent is not known.
    pub fn role(&self) -> Option<Role> {
        Role::of(self.target, self.parent)
    }
}

/// The threads as a traceback each, separated by blank lines.
///
/// # Examples
///
/// ```
/// use heli_core::stacks::{threads_text, Frame, ThreadStack};
///
/// let mut thread = ThreadStack::new(4242);
/// thread.main = true;
/// thread.frames.push(Frame::new("main", "app.py", Some(3)));
/// assert_eq!(
///     threads_text(&[thread]),
///     "Thread 4242 (main), most recent call last:\n  File \"app.py\", line 3, in main\n"
/// );
/// ```
pub fn threads_text(threads: &[ThreadStack]) -> String {
    threads
        .iter()
        .map(ThreadStack::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for ProcessStacks {
    /// A header (pid, role when known, command), then the threads or why
    /// they were skipped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Process {}", self.pid)?;
        if let Some(role) = self.role() {
            write!(f, " ({role})")?;
        }
        if let Some(python) = &self.python {
            write!(f, " Python {python}")?;
        }
        writeln!(f, ": {}", self.command)?;
        match &self.skipped {
            Some(why) => writeln!(f, "  (skipped: {why})"),
            None => f.write_str(&threads_text(&self.threads)),
        }
    }
}
