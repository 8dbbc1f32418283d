//! The granter for Yama's `ptrace_scope=1`: `prctl(PR_SET_PTRACER)` run by
//! the target, injected by its parent.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use heli_core::{Deadline, Granter, Pid, ProcessId, Processes};
use heli_proc::{Proc, ProcFs};
use log::{debug, info, warn};
use nix::errno::Errno;

use crate::ptrace::{Refusal, SyscallInjector};
use crate::python::PyProcess;
use crate::wait::ChildWaits;

use super::names::names;

/// `PR_SET_PTRACER`, Yama's prctl ("Yama" in ASCII).
const PR_SET_PTRACER: u64 = libc::PR_SET_PTRACER as u64;

/// Gives a client the right to ptrace the target under Yama
/// `ptrace_scope=1`, by having the target call
/// `prctl(PR_SET_PTRACER, client)`.
///
/// The controller, being the target's parent, may ptrace it; it injects the
/// call into the target with a [`SyscallInjector`] and reads its return
/// value: a grant succeeds only once the kernel has accepted it, so a client
/// told `READY` can attach at once. Nothing is written to the target's
/// memory and it needs no cooperation, whatever its language.
///
/// Yama keeps one ptracer per process: a grant to another client replaces
/// the previous one, and [`revoke`](Granter::revoke) injects
/// `prctl(PR_SET_PTRACER, 0)`. The granter remembers who holds each target
/// ([`holder`](Self::holder)), as process id and start time, so a client
/// that exited and whose pid was reused is never taken for the holder, and
/// it never injects into a process that is not the target it was given
/// (same pid, same start time). It never grants `PR_SET_PTRACER_ANY`.
///
/// The descendants of the client may attach too (Yama checks the declared
/// process's descendants): a client may run the debugger as its child.
///
/// # Which processes
///
/// Only a process that is, at the last moment, still a descendant of this
/// process and runs as its user: the injector checks it once it has seized
/// a thread ([`SyscallInjector::own_tree_only`]), and remote execution
/// just before it writes the request. A process that left the tree or
/// changed user since the grant was asked is let go untouched, and the
/// grant fails (`PID N left the tree`, `PID N changed user`). A revoke,
/// which only takes a right back, is made wherever the process now is
/// (still that process, by its identity, and never under seccomp).
///
/// # Seccomp
///
/// A process under a seccomp filter (`Seccomp:` not 0 in its status) is
/// refused, untouched: `PID N runs under a seccomp filter: heli injects
/// nothing into it (the filter could kill it)`. The filter meets the
/// `prctl` whoever makes it, so remote execution, which has the process
/// make the call itself, is no way around it, and is never tried there
/// (whatever thread carries the filter). A filter the process installs
/// after the check, before it runs a remote execution's script, is beyond
/// any check.
///
/// # Grant methods
///
/// When the injection is impossible but the process could make the call
/// itself (another tracer, a debugger, is attached to it, or it uses
/// Syscall User Dispatch), the default [`GrantMethod::Auto`] falls back to
/// CPython 3.14's remote execution (PEP 768,
/// [`remote_exec_prctl`](crate::remote_exec_prctl)): the target runs the
/// `prctl` itself when it next executes Python code, and reports the
/// result. [`method`](Self::method) forces one or the other; a grant is
/// revoked by the method that made it.
///
/// # Examples
///
/// ```no_run
/// use heli_core::{Deadline, Granter, Pid, Processes, Supervisor};
/// use heli_grant::{ProcessSupervisor, YamaGranter};
/// use std::process::Command;
/// use std::time::Duration;
///
/// let mut supervisor = ProcessSupervisor::new(Command::new("python3"));
/// let pid = supervisor.spawn()?;
/// let target = supervisor.identity(pid)?.expect("it runs");
/// let mut granter = YamaGranter::new(supervisor.child_waits());
/// // The client process: who it is, start time included.
/// let client = supervisor.identity(Pid::new(4242).unwrap())?.expect("it runs");
/// // Given up (the target left untouched) if it takes over a second.
/// granter.grant(target, client, &Deadline::after(Duration::from_secs(1)))?;
/// assert_eq!(granter.holder(target), Some(client));
/// granter.revoke(target, &Deadline::after(Duration::from_secs(1)))?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct YamaGranter {
    injector: SyscallInjector,
    grants: HashMap<ProcessId, Grant>,
    method: GrantMethod,
    last_method: Option<GrantMethod>,
}

/// How a [`YamaGranter`] has the target call `prctl(PR_SET_PTRACER)`.
/// Parses from and displays as `auto`, `ptrace`, `remote-exec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GrantMethod {
    /// Ptrace injection; remote execution when the injection is impossible
    /// but the target could make the call itself (it is already traced, or
    /// uses Syscall User Dispatch); never for a target under seccomp.
    #[default]
    Auto,
    /// Ptrace injection only: works whatever the target runs and whatever
    /// it is doing.
    Ptrace,
    /// Remote execution only (PEP 768): a CPython 3.14 target runs the call
    /// itself, when one of its threads next executes Python code.
    RemoteExec,
}

/// How long taking back a grant whose client exited during it may take.
const UNDO_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
struct Grant {
    holder: ProcessId,
    /// How it was made: [`Ptrace`](GrantMethod::Ptrace) or
    /// [`RemoteExec`](GrantMethod::RemoteExec).
    method: GrantMethod,
}

impl YamaGranter {
    /// A granter that shares `waits` with the reaper of its targets; see
    /// [`ProcessSupervisor::child_waits`](crate::ProcessSupervisor::child_waits).
    pub fn new(waits: ChildWaits) -> Self {
        Self::with_injector(SyscallInjector::new(waits))
    }

    /// A granter that injects with `injector` (for instance one that
    /// [allows seccomp](SyscallInjector::allow_seccomp): a filter known to
    /// allow the call); the granter has it inject
    /// [only into its own tree](SyscallInjector::own_tree_only).
    pub fn with_injector(injector: SyscallInjector) -> Self {
        YamaGranter {
            injector: injector.own_tree_only(true),
            grants: HashMap::new(),
            method: GrantMethod::Auto,
            last_method: None,
        }
    }

    /// Grants with `method` (default [`GrantMethod::Auto`]).
    pub fn method(mut self, method: GrantMethod) -> Self {
        self.method = method;
        self
    }

    /// The method it was told to use ([`method`](Self::method)).
    pub fn grant_method(&self) -> GrantMethod {
        self.method
    }

    /// The method the last grant or revoke used, [`Ptrace`](GrantMethod::Ptrace)
    /// or [`RemoteExec`](GrantMethod::RemoteExec), whether it succeeded or
    /// not; `None` before the first.
    pub fn last_method(&self) -> Option<GrantMethod> {
        self.last_method
    }

    /// The client that now holds the right to ptrace `target`, if any.
    ///
    /// Checked against the running processes on every call: `None` once the
    /// holder exited (Yama then forgets it too) or the target did.
    pub fn holder(&self, target: ProcessId) -> Option<ProcessId> {
        let grant = self.grants.get(&target)?;
        (ProcFs.is_running(target) && ProcFs.is_running(grant.holder)).then_some(grant.holder)
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, ptracer)` (0 for `None`) by
    /// `method`; returns the method that made the call.
    fn set_ptracer(
        &mut self,
        target: ProcessId,
        ptracer: Option<Pid>,
        method: GrantMethod,
        deadline: &Deadline,
    ) -> io::Result<GrantMethod> {
        let named = ptracer.map_or(0, Pid::get);
        let what = format!("prctl(PR_SET_PTRACER, {named}) in PID {}", target.pid);
        let cannot = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("cannot run {what} by ptrace injection: {err}"),
            )
        };
        if method == GrantMethod::RemoteExec {
            return self
                .by_remote_exec(target, ptracer, deadline)
                .map(|()| method);
        }
        self.last_method = Some(GrantMethod::Ptrace);
        match self.by_ptrace(target, named, &what, deadline) {
            Ok(result) => result.map(|()| GrantMethod::Ptrace),
            Err(err) if Refusal::of(&err) == Some(Refusal::Seccomp) => {
                Err(under_seccomp(target.pid, &err))
            }
            Err(err) if method == GrantMethod::Auto && remote_exec_may_work(&err) => {
                warn!("{what}: ptrace injection impossible ({err}): falling back to remote exec");
                self.by_remote_exec(target, ptracer, deadline)
                    .map(|()| GrantMethod::RemoteExec)
                    .map_err(|remote| {
                        io::Error::new(
                            remote.kind(),
                            format!("ptrace injection impossible ({err}); {remote}"),
                        )
                    })
            }
            Err(err) => Err(cannot(err)),
        }
    }

    /// Injects the call into process `target` and no other (the injector
    /// checks its identity before and after it seizes a thread) by
    /// `deadline` (a target that does not stop for it in time, frozen or
    /// in uninterruptible sleep, is let go untouched):
    /// `Err` when it could not be made, else what it returned.
    fn by_ptrace(
        &self,
        target: ProcessId,
        ptracer: u32,
        what: &str,
        deadline: &Deadline,
    ) -> io::Result<io::Result<()>> {
        // A revoke only takes a right back: wherever the process now is.
        let revoker;
        let injector = match ptracer {
            0 => {
                revoker = self.injector.clone().own_tree_only(false);
                &revoker
            }
            _ => &self.injector,
        };
        let injection = injector.inject(
            target,
            libc::SYS_prctl,
            &[PR_SET_PTRACER, u64::from(ptracer), 0, 0, 0],
            deadline,
        )?;
        Ok(match injection.ret {
            0 => {
                info!(
                    "{what} returned 0 (ptrace injection, thread {})",
                    injection.tid
                );
                Ok(())
            }
            ret if ret < 0 => Err(prctl_error(what, -ret as i32)),
            ret => Err(io::Error::other(format!("{what} returned {ret}"))),
        })
    }

    /// Has the target run the call itself (PEP 768) and report it: only
    /// process `target`, whose memory the request is written into through
    /// a handle bound to it ([`PyProcess::open_id`]), and only if none of
    /// its threads runs under seccomp, and it is still a descendant of
    /// this process running as its user.
    fn by_remote_exec(
        &mut self,
        target: ProcessId,
        ptracer: Option<Pid>,
        deadline: &Deadline,
    ) -> io::Result<()> {
        self.last_method = Some(GrantMethod::RemoteExec);
        let named = u64::from(ptracer.map_or(0, Pid::get));
        may_run_the_call_itself(target, ptracer.is_none())?;
        let result = PyProcess::open_id(target)
            .and_then(|python| python.remote_prctl(libc::PR_SET_PTRACER, named, deadline))
            .map(drop);
        match result {
            Ok(()) => {
                info!(
                    "prctl(PR_SET_PTRACER, {named}) in PID {} returned 0 (remote exec)",
                    target.pid
                );
                Ok(())
            }
            Err(err) => {
                let err = io::Error::from(err);
                Err(io::Error::new(
                    err.kind(),
                    format!("by remote exec (PEP 768): {err}"),
                ))
            }
        }
    }
}

/// Whether an injection was refused for a reason that does not stand in
/// the way of the process making the call itself (another tracer, Syscall
/// User Dispatch): then remote execution may work, and is safe. Not for a
/// seccomp filter, nor for a process one may not ptrace (remote execution
/// needs the same right), nor any other failure.
fn remote_exec_may_work(err: &io::Error) -> bool {
    matches!(
        Refusal::of(err),
        Some(Refusal::Traced | Refusal::UserDispatch)
    )
}

/// Refuses, untouched, process `target` unless it may be asked to run the
/// call itself: none of its threads under seccomp, and (unless the call is
/// a `revoke`'s) still a descendant of this process running as its user.
fn may_run_the_call_itself(target: ProcessId, revoke: bool) -> io::Result<()> {
    let pid = target.pid;
    let gone = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("target PID {pid} is not running"),
        )
    };
    let process = Proc::open_id(target)?.ok_or_else(gone)?;
    for tid in process.threads()? {
        if let Some(status) = process.thread_status(tid)? {
            if status.seccomp != 0 {
                let why = format!("thread {tid} is in seccomp mode {}", status.seccomp);
                return Err(under_seccomp(pid, &why));
            }
        }
    }
    match revoke {
        true => Ok(()),
        false => crate::own_tree::check(target, &process),
    }
}

/// The refusal of process `pid`, under seccomp (`detail` says how).
fn under_seccomp(pid: Pid, detail: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "PID {pid} runs under a seccomp filter: heli injects nothing into it (the filter \
             could kill it); {detail}"
        ),
    )
}

/// The error for `prctl(PR_SET_PTRACER)` returning `errno`: the errno, its
/// name, and what it means here.
fn prctl_error(what: &str, errno: i32) -> io::Error {
    let err = Errno::from_raw(errno);
    let meaning = match err {
        Errno::EINVAL => ": no such process, or the kernel has no Yama",
        Errno::EPERM | Errno::EACCES => ": refused by a security module or seccomp filter",
        _ => "",
    };
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        // `Errno`'s Display is already "EINVAL: Invalid argument".
        format!("{what} failed with errno {errno} ({err}){meaning}"),
    )
}

impl Granter for YamaGranter {
    fn name(&self) -> &str {
        "yama"
    }

    /// `last_grant_method`: how the last grant or revoke was made (ptrace
    /// or remote-exec), so a fallback shows in `STATUS`.
    fn status_fields(&self) -> Vec<(String, String)> {
        self.last_method
            .map(|method| vec![("last_grant_method".to_owned(), method.to_string())])
            .unwrap_or_default()
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, client)` by the
    /// [method](Self::method) chosen; succeeds when it returned 0. Refused
    /// when `target` is no longer the process it names.
    fn grant(&mut self, target: ProcessId, client: ProcessId, due: &Deadline) -> io::Result<()> {
        if !ProcFs.is_running(target) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("target PID {} is not running", target.pid),
            ));
        }
        if !ProcFs.is_running(client) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("client PID {} is not running", client.pid),
            ));
        }
        let method = self.set_ptracer(target, Some(client.pid), self.method, due)?;
        // The client may have exited in the meantime, and its pid gone to
        // another process: then take the grant back.
        if !ProcFs.is_running(client) {
            warn!(
                "client PID {} exited during its grant: revoking",
                client.pid
            );
            self.grants.remove(&target);
            let _ = self.set_ptracer(target, None, method, &Deadline::after(UNDO_DEADLINE));
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("client PID {} exited during its grant", client.pid),
            ));
        }
        let previous = self.grants.insert(
            target,
            Grant {
                holder: client,
                method,
            },
        );
        match previous {
            Some(old) if old.holder != client && ProcFs.is_running(old.holder) => debug!(
                "PID {} may now be ptraced by PID {}, no longer by PID {}",
                target.pid, client.pid, old.holder.pid
            ),
            _ => debug!(
                "PID {} may now be ptraced by PID {}",
                target.pid, client.pid
            ),
        }
        Ok(())
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, 0)`, by the method that
    /// made its grant; a target that is gone (or whose pid now names
    /// another process) has nothing left to revoke.
    fn revoke(&mut self, target: ProcessId, deadline: &Deadline) -> io::Result<()> {
        let grant = self.grants.remove(&target);
        if !ProcFs.is_running(target) {
            debug!("nothing to revoke: target PID {} is gone", target.pid);
            return Ok(());
        }
        let method = grant.map_or(self.method, |grant| grant.method);
        match self.set_ptracer(target, None, method, deadline) {
            Ok(_) => {
                if let Some(old) = grant {
                    info!(
                        "PID {} may no longer be ptraced by PID {}",
                        target.pid, old.holder.pid
                    );
                }
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                debug!("nothing to revoke: {err}");
                Ok(())
            }
            Err(err) => {
                // Still in force: keep the record.
                if let Some(grant) = grant {
                    self.grants.insert(target, grant);
                }
                Err(err)
            }
        }
    }
}

names!(GrantMethod, "grant method", [
    Auto => "auto",
    Ptrace => "ptrace",
    RemoteExec => "remote-exec",
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_errors() {
        let err = prctl_error("prctl(PR_SET_PTRACER, 5) in PID 4", libc::EINVAL);
        let text = err.to_string();
        assert_eq!(
            text,
            "prctl(PR_SET_PTRACER, 5) in PID 4 failed with errno 22 (EINVAL: Invalid argument): \
             no such process, or the kernel has no Yama"
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn parses_methods() {
        let granter = YamaGranter::new(ChildWaits::default()).method(GrantMethod::Ptrace);
        assert_eq!(granter.grant_method(), GrantMethod::Ptrace);
        assert_eq!(granter.last_method(), None);
    }

    #[test]
    fn refuses_a_target_that_is_not_the_process_named() {
        let mut granter = YamaGranter::new(ChildWaits::default());
        let me = ProcFs.identity(Pid::this()).unwrap().unwrap();
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        let soon = Deadline::after(Duration::from_secs(5));
        let err = granter.grant(reused, me, &soon).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!("target PID {} is not running", me.pid)
        );
        assert_eq!(granter.holder(reused), None);
        // Nothing to revoke there either.
        granter.revoke(reused, &soon).unwrap();
    }
}
