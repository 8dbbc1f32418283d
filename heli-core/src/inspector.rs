//! How the controller looks inside its target without changing it.

use std::io;

use crate::process::{Pid, ProcessId};
use crate::stacks::ThreadStack;
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
///     fn stacks(&self, pid: Pid) -> std::io::Result<Vec<ThreadStack>> {
///         let mut main = ThreadStack::new(pid.get().into());
///         main.frames.push(Frame::new("sleep", "time", None));
///         Ok(vec![main])
///     }
/// }
/// assert_eq!(Sleepy.stacks(Pid::this()).unwrap()[0].frames.len(), 1);
/// let err = NoInspector.stacks(Pid::this()).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
/// let me = ProcessId { pid: Pid::this(), start_time: 0 };
/// assert_eq!(Sleepy.tree(me).unwrap_err().kind(), std::io::ErrorKind::Unsupported);
/// ```
pub trait Inspector {
    /// Every thread's stack in process `pid`, outermost call first.
    ///
    /// # Errors
    ///
    /// When the process cannot be inspected; the message says why (not a
    /// Python 3.14 process, remote debugging disabled, gone...).
    fn stacks(&self, pid: Pid) -> io::Result<Vec<ThreadStack>>;

    /// `root` and every living descendant of it, parents before their
    /// children, with the facts `PS` shows (the controller fills in
    /// [`target`](TreeProcess::target) and
    /// [`holder`](TreeProcess::holder)). Empty when `root` is no longer the
    /// process it names.
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
}

/// The inspector of a controller that reads nothing: `STACK` is answered
/// with an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInspector;

impl Inspector for NoInspector {
    fn stacks(&self, _pid: Pid) -> io::Result<Vec<ThreadStack>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this controller cannot read its target's stacks",
        ))
    }
}

macro_rules! forward_inspector {
    ($($wrapper:ty),*) => {$(
        impl<I: Inspector + ?Sized> Inspector for $wrapper {
            fn stacks(&self, pid: Pid) -> io::Result<Vec<ThreadStack>> {
                (**self).stacks(pid)
            }
            fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
                (**self).tree(root)
            }
        }
    )*};
}

forward_inspector!(&I, Box<I>, std::sync::Arc<I>);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Evens;
    impl Inspector for Evens {
        fn stacks(&self, pid: Pid) -> io::Result<Vec<ThreadStack>> {
            if pid.get() % 2 == 0 {
                Ok(vec![ThreadStack::new(pid.get().into())])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "odd"))
            }
        }
        fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            Ok(vec![TreeProcess::new(root.pid)])
        }
    }

    fn check(inspector: impl Inspector) {
        let pid = |raw| Pid::new(raw).unwrap();
        assert_eq!(inspector.stacks(pid(4)).unwrap()[0].native_thread_id, 4);
        let err = inspector.stacks(pid(5)).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (io::ErrorKind::NotFound, "odd".into())
        );
        let root = ProcessId {
            pid: pid(6),
            start_time: 1,
        };
        assert_eq!(inspector.tree(root).unwrap()[0].pid, pid(6));
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
}
