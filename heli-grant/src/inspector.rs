//! The inspector of CPython 3.14 targets: their stacks, read from memory.

use std::io;

use heli_core::stacks::{Frame, ThreadStack};
use heli_core::{Inspector, Pid};

/// Reads a CPython 3.14 process's Python stacks from its memory, through
/// its debug offsets (PEP 768), without stopping it or running anything in
/// it; what a controller answers `STACK` with.
///
/// It needs the right to read the target's memory, which the controller,
/// the target's parent, has under Yama `ptrace_scope=1`.
///
/// # Examples
///
/// ```no_run
/// use heli_core::{Inspector, Pid};
/// use heli_grant::PythonInspector;
///
/// // Every thread, most recent call last.
/// let threads = PythonInspector.stacks(Pid::new(4242).unwrap())?;
/// print!("{}", heli_core::stacks::threads_text(&threads));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PythonInspector;

impl Inspector for PythonInspector {
    // TODO(tree-facts): the reader yields heli_core's types itself; tree().
    fn stacks(&self, pid: Pid) -> io::Result<Vec<ThreadStack>> {
        let threads = crate::python::stack_dump(pid)?;
        Ok(threads
            .into_iter()
            .map(|thread| {
                let mut stack = ThreadStack::new(thread.native_thread_id);
                stack.thread_id = thread.thread_id;
                stack.name = thread.name;
                stack.interpreter_id = thread.interpreter_id;
                stack.main = thread.main;
                stack.incomplete = thread.incomplete;
                stack.frames = thread
                    .frames
                    .into_iter()
                    .map(|frame| Frame::new(frame.qualname, frame.filename, frame.line))
                    .collect();
                stack
            })
            .collect())
    }
}
