//! The granter for kernels that need no grant.

use std::io;

use heli_core::{Deadline, Granter, ProcessId};

/// Grants nothing, because nothing is needed: without Yama, or with
/// `ptrace_scope=0`, any process of the user may ptrace the target.
///
/// The controller still keeps track of who asked last, so that it can tell
/// a second client that the target is being debugged, as under Yama.
///
/// # Examples
///
/// ```
/// use heli_core::{Deadline, Granter, Pid, ProcessId};
/// use heli_grant::NoopGranter;
/// use std::time::Duration;
///
/// let mut granter = NoopGranter;
/// assert_eq!(granter.name(), "noop");
/// let anyone = ProcessId { pid: Pid::this(), start_time: 1 };
/// let soon = Deadline::after(Duration::from_secs(1));
/// granter.grant(anyone, anyone, &soon).unwrap();
/// granter.revoke(anyone, &soon).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopGranter;

impl Granter for NoopGranter {
    fn name(&self) -> &str {
        "noop"
    }

    fn grant(&mut self, _: ProcessId, _: ProcessId, _: &Deadline) -> io::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _: ProcessId, _: &Deadline) -> io::Result<()> {
        Ok(())
    }
}
