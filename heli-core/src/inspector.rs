//! How the controller looks inside its target without changing it.

use std::io;

use crate::process::ProcessId;
use crate::stacks::ThreadStack;
use crate::tasks::AsyncTasks;
use crate::tree::TreeProcess;

/// Reads what the processes of the supervised tree are running, without
/// stopping them or running anything in them, and without giving anyone a
/// right over them: every thread's stack (`STACK`, `STACKS`) and the facts
/// `PS` lists.
///
/// The controller, the target's ancestor, may read its tree's memory where
/// no client may (Yama's `ptrace_scope=1`); an inspector is the code that
/// does so. It is used from a thread of its own, with a deadline: a slow
/// read never holds up the controller. `heli-grant`'s `PythonInspector`
/// reads CPython 3.14's stacks through its debug offsets (PEP 768) and the
/// tree from `/proc`.
///
/// # Examples
///
/// ```
/// use heli_core::stacks::{Frame, ThreadStack};
/// use heli_core::{Inspector, NoInspector, Pid, ProcessId};
///
/// /// Knows one thing about every process.
/// struct Sleepy;
/// impl Inspector for Sleepy {
///     fn stacks(&self, process: ProcessId) -> std::io::Result<Vec<ThreadStack>> {
///         let mut main = ThreadStack::new(process.pid.get().into());
///         main.frames.push(Frame::new("sleep", "time", None));
///         Ok(vec![main])
///     }
/// }
/// let me = ProcessId { pid: Pid::this(), start_time: 0 };
/// assert_eq!(Sleepy.stacks(me).unwrap()[0].frames.len(), 1);
/// let err = NoInspector.stacks(me).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
/// assert_eq!(Sleepy.tree(me).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
/// assert_eq!(Sleepy.process(me).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
/// assert_eq!(Sleepy.tasks(me).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
/// ```
pub trait Inspector {
    /// Every thread's stack in `process`, outermost call first.
    ///
    /// It reads that process and no other: when its pid now names another
    /// process (the one it named has ended and the pid was reused: its
    /// start time differs), it fails and reads nothing. The controller
    /// relies on that: it asks for processes it found in the tree earlier.
    ///
    /// # Errors
    ///
    /// When the process cannot be inspected; the message says why (not a
    /// Python 3.14 process, remote debugging disabled, gone...).
    fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>>;

    /// `root` and every living descendant of it, with the facts `PS` shows
    /// (the controller fills in [`target`](TreeProcess::target) and
    /// [`holder`](TreeProcess::holder)), in depth-first order (the order of
    /// `ps f`): `root` first, each process followed by its children's
    /// subtrees, the children in pid order. Empty when `root` is no longer
    /// the process it names.
    ///
    /// # Errors
    ///
    /// When the tree cannot be read; by default
    /// [`io::ErrorKind::Unsupported`].
    fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
        let _ = root;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this controller cannot list its target's tree",
        ))
    }

    /// The facts of `process` alone, as [`tree`](Self::tree) gives them
    /// (without [`parent`](TreeProcess::parent)'s own facts or its
    /// children's): `None` when it is no longer running (or its pid names
    /// another process now). By default the first process of
    /// `tree(process)`; an inspector that can read one process without its
    /// descendants should, so that a slow descendant does not hold it up.
    ///
    /// # Errors
    ///
    /// When its facts cannot be read; by default
    /// [`io::ErrorKind::Unsupported`] as [`tree`](Self::tree)'s.
    fn process(&self, process: ProcessId) -> io::Result<Option<TreeProcess>> {
        Ok(self
            .tree(process)?
            .into_iter()
            .find(|facts| facts.pid == process.pid))
    }

    /// The asyncio tasks of `process` (`TASKS`): every pending task, with
    /// its name, its coroutine stack and the tasks that await it, read as
    /// [`stacks`](Self::stacks) reads, from that process and no other.
    /// No task (and a [`note`](AsyncTasks::note) saying why, when it can
    /// tell) when it runs no event loop or does not use asyncio.
    ///
    /// # Errors
    ///
    /// When the process cannot be inspected (not a Python 3.14 process,
    /// gone...); by default [`io::ErrorKind::Unsupported`].
    fn tasks(&self, process: ProcessId) -> io::Result<AsyncTasks> {
        let _ = process;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this controller cannot read its target's asyncio tasks",
        ))
    }

    /// A reader of the same processes' stacks again and again: what a
    /// profile samples with, from its own thread, for as long as it runs.
    /// Each of its reads is one [`stacks`](Self::stacks) would give (the
    /// same process and no other), and may cost less: an inspector that
    /// must find its way into a process before reading it (open its
    /// memory, find its runtime) can keep that from one read to the next.
    /// By default, one that calls [`stacks`](Self::stacks) each time.
    ///
    /// # Examples
    ///
    /// ```
    /// use heli_core::stacks::ThreadStack;
    /// use heli_core::{Inspector, Pid, ProcessId};
    ///
    /// struct Empty;
    /// impl Inspector for Empty {
    ///     fn stacks(&self, _: ProcessId) -> std::io::Result<Vec<ThreadStack>> {
    ///         Ok(Vec::new())
    ///     }
    /// }
    /// let me = ProcessId { pid: Pid::this(), start_time: 0 };
    /// let mut reader = Empty.stack_reader();
    /// for _ in 0..3 {
    ///     assert!(reader.stacks(me)?.is_empty());
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn stack_reader(&self) -> Box<dyn StackReader + '_> {
        Box::new(Rereads(self))
    }
}

/// Reads stacks again and again ([`Inspector::stack_reader`]), keeping
/// what it may between reads.
pub trait StackReader {
    /// Every thread's stack in `process`, as [`Inspector::stacks`] reads
    /// them: from that process and no other.
    ///
    /// # Errors
    ///
    /// As [`Inspector::stacks`]'s.
    fn stacks(&mut self, process: ProcessId) -> io::Result<Vec<ThreadStack>>;
}

/// The default [`StackReader`]: [`Inspector::stacks`] at each read.
struct Rereads<'a, I: ?Sized>(&'a I);

impl<I: Inspector + ?Sized> StackReader for Rereads<'_, I> {
    fn stacks(&mut self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        self.0.stacks(process)
    }
}

/// The inspector of a controller that reads nothing: `STACK` is answered
/// with an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInspector;

impl Inspector for NoInspector {
    fn stacks(&self, _process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this controller cannot read its target's stacks",
        ))
    }
}

macro_rules! forward_inspector {
    ($($wrapper:ty),*) => {$(
        impl<I: Inspector + ?Sized> Inspector for $wrapper {
            fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
                (**self).stacks(process)
            }
            fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
                (**self).tree(root)
            }
            fn process(&self, process: ProcessId) -> io::Result<Option<TreeProcess>> {
                (**self).process(process)
            }
            fn tasks(&self, process: ProcessId) -> io::Result<AsyncTasks> {
                (**self).tasks(process)
            }
            fn stack_reader(&self) -> Box<dyn StackReader + '_> {
                (**self).stack_reader()
            }
        }
    )*};
}

forward_inspector!(&I, Box<I>, std::sync::Arc<I>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Pid;
    use std::sync::Arc;

    fn id(raw: u32) -> ProcessId {
        ProcessId {
            pid: Pid::new(raw).unwrap(),
            start_time: 1,
        }
    }

    /// Reads even pids; the tree of `n` is `n` and its child `n + 1`.
    struct Evens;
    impl Inspector for Evens {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let pid = process.pid.get();
            if pid % 2 == 0 {
                Ok(vec![ThreadStack::new(pid.into())])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "odd"))
            }
        }
        fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            let mut child = TreeProcess::new(Pid::new(root.pid.get() + 1).unwrap());
            child.parent = Some(root.pid);
            Ok(vec![TreeProcess::new(root.pid), child])
        }
        fn tasks(&self, process: ProcessId) -> io::Result<AsyncTasks> {
            Ok(AsyncTasks::new(process.pid))
        }
        fn stack_reader(&self) -> Box<dyn StackReader + '_> {
            Box::new(Tens)
        }
    }

    /// Evens' reader: tells itself by its thread ids, ten times the pid.
    struct Tens;
    impl StackReader for Tens {
        fn stacks(&mut self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            Ok(vec![ThreadStack::new(u64::from(process.pid.get()) * 10)])
        }
    }

    fn check(inspector: impl Inspector) {
        assert_eq!(inspector.stacks(id(4)).unwrap()[0].native_thread_id, 4);
        let err = inspector.stacks(id(5)).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (io::ErrorKind::NotFound, "odd".into())
        );
        let pids: Vec<_> = inspector
            .tree(id(6))
            .unwrap()
            .iter()
            .map(|p| p.pid.get())
            .collect();
        assert_eq!(pids, [6, 7]);
        // One process's facts: its own, not its child's.
        let one = inspector.process(id(6)).unwrap().unwrap();
        assert_eq!((one.pid.get(), one.parent), (6, None));
        assert_eq!(inspector.tasks(id(8)).unwrap().pid.get(), 8);
        // Its own reader, not the default one.
        let mut reader = inspector.stack_reader();
        assert_eq!(reader.stacks(id(4)).unwrap()[0].native_thread_id, 40);
    }

    #[test]
    fn the_default_stack_reader_reads_as_stacks_does() {
        let mut reader = NoInspector.stack_reader();
        let err = reader.stacks(id(4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let empty = Gone;
        let mut reader = empty.stack_reader();
        assert!(reader.stacks(id(4)).unwrap().is_empty());
    }

    #[test]
    fn references_boxes_and_arcs_are_the_inspector_they_hold() {
        check(Evens);
        check(&Evens);
        check(Box::new(Evens));
        check(Arc::new(Evens));
        let shared: Arc<dyn Inspector + Send + Sync> = Arc::new(Evens);
        check(shared);
    }

    /// Has no threads and no tree.
    struct Gone;
    impl Inspector for Gone {
        fn stacks(&self, _process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            Ok(Vec::new())
        }
        fn tree(&self, _root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn one_process_is_none_once_its_tree_is_empty() {
        assert_eq!(Gone.process(id(6)).unwrap(), None);
        assert_eq!(
            NoInspector.process(id(6)).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }
}
