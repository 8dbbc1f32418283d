//! Python stacks read from a process's memory, as `STACK` shows them (text,
//! like a traceback) and `STACKS` sends them (JSON).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::process::Pid;
use crate::tree::Role;

/// What a stack dump read by the agent in the process says of itself
/// (see [`ProcessStacks::via`]): unlike the controller's own memory read,
/// the agent's ran code in the process.
pub const READ_BY_AGENT: &str = "(read by the agent inside the process: this ran code in it)";

/// One Python frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
        // What it did and whether it held the GIL, each when known: a
        // thread may hold the GIL asleep (in a C call that keeps it).
        let activity = self.activity.map(|activity| match activity {
            Activity::Running => "running",
            Activity::Idle => "idle",
        });
        match (activity, self.gil == Some(true)) {
            (Some(activity), true) => write!(f, " [{activity}, holds the GIL]")?,
            (Some(activity), false) => write!(f, " [{activity}]")?,
            (None, true) => f.write_str(" [holds the GIL]")?,
            (None, false) => {}
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
    /// Who read them, when not the controller from the process's memory:
    /// `agent` for the agent inside the process (see
    /// [`Agent::stacks`](crate::Agent::stacks) and [`via_note`](Self::via_note)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
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
            via: None,
        }
    }

    /// What a stack dump says of how it was read, when not from the
    /// process's memory: [`READ_BY_AGENT`] for the agent's.
    ///
    /// # Examples
    ///
    /// ```
    /// use heli_core::stacks::{ProcessStacks, READ_BY_AGENT};
    /// use heli_core::Pid;
    ///
    /// let mut stacks = ProcessStacks::new(Pid::new(7).unwrap());
    /// assert_eq!(stacks.via_note(), None);
    /// stacks.via = Some("agent".into());
    /// assert_eq!(stacks.via_note().as_deref(), Some(READ_BY_AGENT));
    /// stacks.via = Some("a core file".into());
    /// assert_eq!(stacks.via_note().as_deref(), Some("(read by a core file)"));
    /// ```
    pub fn via_note(&self) -> Option<String> {
        self.via.as_deref().map(|via| match via {
            "agent" => READ_BY_AGENT.to_owned(),
            other => format!("(read by {other})"),
        })
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
        if let Some(note) = self.via_note() {
            writeln!(f, "  {note}")?;
        }
        match &self.skipped {
            Some(why) => writeln!(f, "  (skipped: {why})"),
            None => f.write_str(&threads_text(&self.threads)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(activity: Option<Activity>, gil: Option<bool>) -> String {
        let mut thread = ThreadStack::new(7);
        thread.activity = activity;
        thread.gil = gil;
        thread.to_string().lines().next().unwrap().to_owned()
    }

    #[test]
    fn a_threads_activity_and_the_gil_are_shown_each_as_known() {
        use Activity::{Idle, Running};
        for (activity, gil, shown) in [
            (Some(Running), Some(false), " [running]"),
            (Some(Idle), None, " [idle]"),
            (Some(Running), Some(true), " [running, holds the GIL]"),
            (Some(Idle), Some(true), " [idle, holds the GIL]"),
            (None, Some(true), " [holds the GIL]"),
            (None, Some(false), ""),
            (None, None, ""),
        ] {
            assert_eq!(
                header(activity, gil),
                format!("Thread 7{shown}, most recent call last:"),
                "{activity:?} {gil:?}"
            );
        }
    }

    #[test]
    fn a_process_header_names_its_role_when_known() {
        let mut process = ProcessStacks::new(Pid::new(12).unwrap());
        process.command = "python app.py".into();
        process.skipped = Some("not a Python process".into());
        let first_line =
            |process: &ProcessStacks| process.to_string().lines().next().unwrap().to_owned();
        assert_eq!(first_line(&process), "Process 12: python app.py");
        process.parent = Pid::new(11);
        assert_eq!(
            first_line(&process),
            "Process 12 (child of 11): python app.py"
        );
        assert_eq!(process.role(), Some(Role::ChildOf(Pid::new(11).unwrap())));
        process.target = true;
        process.python = Some("3.14.0".into());
        assert_eq!(
            first_line(&process),
            "Process 12 (target) Python 3.14.0: python app.py"
        );
        assert!(process
            .to_string()
            .ends_with("  (skipped: not a Python process)\n"));
    }

    #[test]
    fn stacks_the_agent_read_say_so_under_their_header() {
        let mut process = ProcessStacks::new(Pid::new(12).unwrap());
        process.command = "python app.py".into();
        process.threads.push(ThreadStack::new(12));
        process.via = Some("agent".into());
        assert_eq!(
            process.to_string(),
            format!(
                "Process 12: python app.py\n  {READ_BY_AGENT}\nThread 12, most recent call \
                 last:\n  (no Python frame)\n"
            )
        );
        // In JSON only when set, and optional when read.
        let json = serde_json::to_string(&process).unwrap();
        assert!(json.ends_with(r#","via":"agent"}"#), "{json}");
        process.via = None;
        let json = serde_json::to_string(&process).unwrap();
        assert!(!json.contains("via"), "{json}");
        let back: ProcessStacks = serde_json::from_str(&json).unwrap();
        assert_eq!(back, process);
    }
}
