//! How the controller looks inside its target without changing it.

use std::io;

use crate::process::Pid;

/// Reads what a process is running, without stopping it or running
/// anything in it, and without giving anyone a right over it: for now every
/// thread's stack, for the `STACK` request.
///
/// The controller, the target's parent, may read its memory where no client
/// may (Yama's `ptrace_scope=1`); an inspector is the code that does so. It
/// is used from a thread of its own, with a deadline: a slow read never
/// holds up the controller. `heli-grant`'s `PythonInspector` reads CPython
/// 3.14's stacks through its debug offsets (PEP 768).
///
/// # Examples
///
/// ```
/// use heli_core::{Inspector, NoInspector, Pid};
///
/// /// Knows one thing about every process.
/// struct Sleepy;
/// impl Inspector for Sleepy {
///     fn stack_dump(&self, pid: Pid) -> std::io::Result<String> {
///         Ok(format!("Thread {pid} (main)\n  time.sleep\n"))
///     }
/// }
/// assert!(Sleepy.stack_dump(Pid::this()).unwrap().starts_with("Thread"));
/// let err = NoInspector.stack_dump(Pid::this()).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
/// ```
pub trait Inspector {
    /// Every thread's stack in process `pid`, as text for the user (most
    /// recent call last, like a traceback).
    ///
    /// # Errors
    ///
    /// When the process cannot be inspected; the message says why (not a
    /// Python 3.14 process, remote debugging disabled, gone...).
    fn stack_dump(&self, pid: Pid) -> io::Result<String>;
}

/// The inspector of a controller that was given none: it cannot read
/// anything, and says so.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInspector;

impl Inspector for NoInspector {
    fn stack_dump(&self, _pid: Pid) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this controller cannot read its target's stacks",
        ))
    }
}

/// Implements [`Inspector`] for wrappers of an inspector (`&I`, `Box<I>`,
/// `Arc<I>`) by handing every call to the inspector they hold.
macro_rules! forward_inspector {
    ($($wrapper:ty),*) => {$(
        impl<I: Inspector + ?Sized> Inspector for $wrapper {
            fn stack_dump(&self, pid: Pid) -> io::Result<String> {
                (**self).stack_dump(pid)
            }
        }
    )*};
}

forward_inspector!(&I, Box<I>, std::sync::Arc<I>);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Knows the stacks of even pids only.
    struct Evens;
    impl Inspector for Evens {
        fn stack_dump(&self, pid: Pid) -> io::Result<String> {
            if pid.get() % 2 == 0 {
                Ok(format!("Thread {pid}\n"))
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, "odd"))
            }
        }
    }

    fn check(inspector: impl Inspector) {
        let pid = |raw| Pid::new(raw).unwrap();
        assert_eq!(inspector.stack_dump(pid(4)).unwrap(), "Thread 4\n");
        let err = inspector.stack_dump(pid(5)).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (io::ErrorKind::NotFound, "odd".into())
        );
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
