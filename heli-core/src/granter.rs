//! How the controller gives a client the right to ptrace the target.

use std::io;

use crate::deadline::Deadline;
use crate::process::ProcessId;

/// Gives a client process the right to ptrace the target, and takes it back.
///
/// Under Yama `ptrace_scope=1` only ancestors may ptrace a process, unless the
/// process names another one with `prctl(PR_SET_PTRACER, pid)`; a granter
/// makes that happen *in the target* on the controller's behalf. Where the
/// kernel needs nothing (no Yama, or scope 0), a granter may do nothing.
///
/// A granter only carries grants out: the controller decides who may have
/// one, keeps track of who holds it, and withdraws it when its holder goes
/// (see [`Controller`](crate::Controller)). A grant returns only once it is
/// in force: a client told `READY` can attach at once.
///
/// # Examples
///
/// ```
/// use heli_core::{Deadline, Granter, Pid, ProcessId};
/// use std::time::Duration;
///
/// /// Remembers who may ptrace what.
/// #[derive(Default)]
/// struct Notebook(Vec<(ProcessId, ProcessId)>);
/// impl Granter for Notebook {
///     fn name(&self) -> &str { "notebook" }
///     fn grant(&mut self, target: ProcessId, client: ProcessId, _: &Deadline) -> std::io::Result<()> {
///         self.0.retain(|(t, _)| *t != target);
///         self.0.push((target, client));
///         Ok(())
///     }
///     fn revoke(&mut self, target: ProcessId, _: &Deadline) -> std::io::Result<()> {
///         self.0.retain(|(t, _)| *t != target);
///         Ok(())
///     }
/// }
/// let id = |pid| ProcessId { pid: Pid::new(pid).unwrap(), start_time: 1 };
/// let soon = Deadline::after(Duration::from_secs(5));
/// let mut granter = Notebook::default();
/// granter.grant(id(10), id(20), &soon)?;
/// granter.grant(id(10), id(30), &soon)?;
/// assert_eq!(granter.0, [(id(10), id(30))]);
/// // It reports no status fields: the trait's default.
/// assert!(granter.status_fields().is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Granter {
    /// A short name for logs and status ("noop", "yama", ...).
    fn name(&self) -> &str;

    /// Lets process `client` (and its descendants) ptrace process `target`,
    /// replacing any earlier grant on `target`, by the deadline `due`.
    ///
    /// The controller runs it on a thread of its own, so it may wait on the
    /// target; it must not wait past `due` (or once it is called off) and
    /// must then leave the target as it found it.
    ///
    /// # Errors
    ///
    /// When the grant could not be made or verified, or `due` came first;
    /// the message is shown to the client after `ERROR: Grant failed:`.
    fn grant(&mut self, target: ProcessId, client: ProcessId, due: &Deadline) -> io::Result<()>;

    /// Withdraws any grant on `target`, by the deadline `due`; a target
    /// that is gone has nothing left to withdraw.
    ///
    /// # Errors
    ///
    /// When the grant could not be withdrawn.
    fn revoke(&mut self, target: ProcessId, due: &Deadline) -> io::Result<()>;

    /// Facts about the granter for `STATUS` replies, as `key=value` pairs
    /// (default: none); for instance how the last grant was made.
    fn status_fields(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Implements [`Granter`] for wrappers of a granter (`&mut G`, `Box<G>`)
/// by handing every call to the granter they hold.
macro_rules! forward_granter {
    ($($wrapper:ty),*) => {$(
        impl<G: Granter + ?Sized> Granter for $wrapper {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn grant(&mut self, target: ProcessId, client: ProcessId, due: &Deadline) -> io::Result<()> {
                (**self).grant(target, client, due)
            }
            fn revoke(&mut self, target: ProcessId, due: &Deadline) -> io::Result<()> {
                (**self).revoke(target, due)
            }
            fn status_fields(&self) -> Vec<(String, String)> {
                (**self).status_fields()
            }
        }
    )*};
}

forward_granter!(&mut G, Box<G>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::table::pid;

    fn id(raw: u32) -> ProcessId {
        ProcessId {
            pid: pid(raw),
            start_time: u64::from(raw) * 10,
        }
    }

    /// Records grants and revokes, fails those that name PID 13, and says
    /// how many grants it made.
    #[derive(Default)]
    struct Ledger {
        grants: Vec<(ProcessId, ProcessId)>,
        revokes: Vec<ProcessId>,
    }

    impl Granter for Ledger {
        fn name(&self) -> &str {
            "ledger"
        }
        fn grant(&mut self, target: ProcessId, client: ProcessId, _: &Deadline) -> io::Result<()> {
            if client.pid.get() == 13 {
                return Err(io::Error::other("unlucky"));
            }
            self.grants.push((target, client));
            Ok(())
        }
        fn revoke(&mut self, target: ProcessId, _: &Deadline) -> io::Result<()> {
            if target.pid.get() == 13 {
                return Err(io::Error::other("unlucky"));
            }
            self.revokes.push(target);
            Ok(())
        }
        fn status_fields(&self) -> Vec<(String, String)> {
            vec![("grants".into(), self.grants.len().to_string())]
        }
    }

    /// Exercises `granter` as the controller does, through any wrapper.
    fn check(mut granter: impl Granter) {
        assert_eq!(granter.name(), "ledger");
        let soon = Deadline::after(std::time::Duration::from_secs(1));
        granter.grant(id(1), id(2), &soon).unwrap();
        assert_eq!(
            granter.grant(id(1), id(13), &soon).unwrap_err().to_string(),
            "unlucky"
        );
        granter.revoke(id(1), &soon).unwrap();
        assert_eq!(
            granter.revoke(id(13), &soon).unwrap_err().to_string(),
            "unlucky"
        );
        assert_eq!(granter.status_fields(), [("grants".into(), "1".into())]);
    }

    #[test]
    fn references_and_boxes_are_the_granter_they_hold() {
        let mut ledger = Ledger::default();
        check(&mut ledger);
        assert_eq!(ledger.grants, [(id(1), id(2))]);
        assert_eq!(ledger.revokes, [id(1)]);
        check(Box::new(Ledger::default()));
        let boxed: Box<dyn Granter> = Box::new(Ledger::default());
        check(boxed);
    }
}
