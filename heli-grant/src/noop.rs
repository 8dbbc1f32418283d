//! The granter for kernels that need no grant.

use std::io;

use heli_core::Granter;

/// Grants nothing, because nothing is needed: without Yama, or with
/// `ptrace_scope=0`, any process of the user may ptrace the target.
///
/// # Examples
///
/// ```
/// use heli_core::Granter;
/// use heli_grant::NoopGranter;
///
/// let mut granter = NoopGranter;
/// assert_eq!(granter.name(), "noop");
/// granter.grant(1, std::process::id()).unwrap();
/// assert!(granter.grant(1, i32::MAX as u32).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopGranter;

impl Granter for NoopGranter {
    fn name(&self) -> &str {
        "noop"
    }

    /// Checks only that `client` exists, as the kernel would under Yama.
    fn grant(&mut self, _target: u32, client: u32) -> io::Result<()> {
        let pid = nix::unistd::Pid::from_raw(client as i32);
        match nix::sys::signal::kill(pid, None) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no process with PID {client}"),
            )),
            Err(err) => Err(err.into()),
        }
    }

    fn revoke(&mut self, _target: u32) -> io::Result<()> {
        Ok(())
    }
}
