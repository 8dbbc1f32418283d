//! The granter for kernels that need no grant.

use std::collections::HashMap;
use std::io;

use heli_core::Granter;

use super::yama::Holder;

/// Grants nothing, because nothing is needed: without Yama, or with
/// `ptrace_scope=0`, any process of the user may ptrace the target.
///
/// It still keeps track of who asked last, so that the controller can tell
/// a second client that the target is being debugged, as under Yama.
///
/// # Examples
///
/// ```
/// use heli_core::Granter;
/// use heli_grant::NoopGranter;
///
/// let mut granter = NoopGranter::default();
/// assert_eq!(granter.name(), "noop");
/// granter.grant(1, std::process::id()).unwrap();
/// assert_eq!(granter.holder_pid(1), Some(std::process::id()));
/// assert!(granter.grant(1, i32::MAX as u32).is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct NoopGranter {
    holders: HashMap<u32, Holder>,
}

impl Granter for NoopGranter {
    fn name(&self) -> &str {
        "noop"
    }

    /// Checks only that `client` exists, as the kernel would under Yama.
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()> {
        let holder = Holder::current(client).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no process with PID {client}"),
            )
        })?;
        self.holders.insert(target, holder);
        Ok(())
    }

    fn revoke(&mut self, target: u32) -> io::Result<()> {
        self.holders.remove(&target);
        Ok(())
    }

    fn holder_pid(&self, target: u32) -> Option<u32> {
        self.holders
            .get(&target)
            .filter(|holder| holder.is_running())
            .map(|holder| holder.pid)
    }
}
