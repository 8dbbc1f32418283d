//! How the controller gives a client the right to ptrace the target.

use std::io;

/// Gives a client process the right to ptrace the target, and takes it back.
///
/// Under Yama `ptrace_scope=1` only ancestors may ptrace a process, unless the
/// process names another one with `prctl(PR_SET_PTRACER, pid)`; a granter
/// makes that happen *in the target* on the controller's behalf. Where the
/// kernel needs nothing (no Yama, or scope 0), a granter may do nothing.
///
/// A grant returns only once it is in force: a client told `READY` can
/// attach at once.
pub trait Granter {
    /// A short name for logs and status ("noop", "yama", ...).
    fn name(&self) -> &str;

    /// Lets `client` (and its descendants) ptrace `target`, replacing any
    /// earlier grant on `target`.
    ///
    /// # Errors
    ///
    /// When the grant could not be made or verified; the message is shown to
    /// the client after `ERROR:`.
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()>;

    /// Withdraws any grant on `target`.
    ///
    /// # Errors
    ///
    /// When the grant could not be withdrawn.
    fn revoke(&mut self, target: u32) -> io::Result<()>;

    /// The process that holds the grant on `target` now, if the granter
    /// tracks it (the default: it does not). Checked against the running
    /// processes, never a stale record: `None` once the holder exited.
    fn holder_pid(&self, target: u32) -> Option<u32> {
        let _ = target;
        None
    }

    /// Facts about the granter for `STATUS` replies, as `key=value` pairs
    /// (default: none); for instance how the last grant was made.
    fn status_fields(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl<G: Granter + ?Sized> Granter for &mut G {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()> {
        (**self).grant(target, client)
    }
    fn revoke(&mut self, target: u32) -> io::Result<()> {
        (**self).revoke(target)
    }
    fn holder_pid(&self, target: u32) -> Option<u32> {
        (**self).holder_pid(target)
    }
    fn status_fields(&self) -> Vec<(String, String)> {
        (**self).status_fields()
    }
}

impl<G: Granter + ?Sized> Granter for Box<G> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()> {
        (**self).grant(target, client)
    }
    fn revoke(&mut self, target: u32) -> io::Result<()> {
        (**self).revoke(target)
    }
    fn holder_pid(&self, target: u32) -> Option<u32> {
        (**self).holder_pid(target)
    }
    fn status_fields(&self) -> Vec<(String, String)> {
        (**self).status_fields()
    }
}
