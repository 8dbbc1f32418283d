//! Whether a process is still one this process may act on for a client:
//! a descendant of it, running as its user. Checked at the last moment
//! before anything is done to the process (after the seize, for an
//! injection), since a process may change user or leave the tree between
//! the request and the act.

use std::io;

use heli_core::{Pid, ProcessId, Processes};
use heli_proc::{Proc, ProcFs};

/// Refuses process `id`, opened as `process`, unless it still runs as this
/// process's user (its real and effective user ids both this process's
/// effective one, the rule the controller applies to a request) and is
/// still this process or a descendant of it
/// ([`Processes::is_self_or_descendant`]).
///
/// # Errors
///
/// [`PermissionDenied`](io::ErrorKind::PermissionDenied) saying
/// `PID N changed user` or `PID N left the tree`;
/// [`NotFound`](io::ErrorKind::NotFound) once it is gone; others when
/// `/proc` cannot be read.
pub(crate) fn check(id: ProcessId, process: &Proc) -> io::Result<()> {
    let pid = id.pid;
    let gone = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("PID {pid} is gone: nothing was done to it"),
        )
    };
    let info = process
        .info()?
        .filter(|info| info.id == id)
        .ok_or_else(gone)?;
    let me = nix::unistd::geteuid().as_raw();
    if let Some(why) = heli_core::other_user(info.uid, info.euid, me) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("PID {pid} changed user (it {why}): nothing was done to it"),
        ));
    }
    let this = ProcFs
        .identity(Pid::this())?
        .ok_or_else(|| io::Error::other("this process has no identity in /proc"))?;
    if !ProcFs.is_self_or_descendant(pid, this)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "PID {pid} left the tree (it is no longer a descendant of the controller, \
                 PID {}): nothing was done to it",
                this.pid
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_of_this_user_passes_and_a_stranger_does_not() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let id = ProcFs.identity(pid).unwrap().unwrap();
        let proc = Proc::open_id(id).unwrap().unwrap();
        let passed = check(id, &proc);
        // PID 1 is no descendant of ours (and may be another user's).
        let init = ProcFs.identity(Pid::new(1).unwrap()).unwrap().unwrap();
        let refused = check(init, &Proc::open_id(init).unwrap().unwrap()).unwrap_err();
        let _ = child.kill();
        let _ = child.wait();
        passed.unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied, "{refused}");
        let text = refused.to_string();
        assert!(
            text.starts_with("PID 1 left the tree") || text.starts_with("PID 1 changed user"),
            "{text}"
        );
        // Gone now.
        let err = check(id, &proc).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
