//! The inspector of CPython 3.14 targets: their stacks, read from memory.

use std::io;

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
/// print!("{}", PythonInspector.stack_dump(Pid::new(4242).unwrap())?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PythonInspector;

impl Inspector for PythonInspector {
    fn stack_dump(&self, pid: Pid) -> io::Result<String> {
        let threads = crate::python::stack_dump(pid)?;
        Ok(threads
            .iter()
            .map(|thread| thread.to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
