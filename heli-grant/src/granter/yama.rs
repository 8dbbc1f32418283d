//! The granter for Yama's `ptrace_scope=1`: `prctl(PR_SET_PTRACER)` run by
//! the target, injected by its parent.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use heli_core::Granter;
use log::{debug, info, warn};
use nix::errno::Errno;

use crate::ptrace::SyscallInjector;
use crate::python::{remote_exec_prctl, remote_prctl};
use crate::wait::ChildWaits;

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
/// that exited and whose pid was reused is never taken for the holder. It
/// never grants `PR_SET_PTRACER_ANY`.
///
/// The descendants of the client may attach too (Yama checks the declared
/// process's descendants): a client may run the debugger as its child.
///
/// # Grant methods
///
/// When the injection is impossible (another tracer, a debugger, is
/// attached to the target, or it runs under seccomp), the default
/// [`GrantMethod::Auto`] falls back to CPython 3.14's remote execution
/// (PEP 768, [`remote_exec_prctl`](crate::remote_exec_prctl)): the target
/// runs the `prctl` itself when it next executes Python code, and reports
/// the result. [`method`](Self::method) forces one or the other; a grant is
/// revoked by the method that made it.
///
/// # Examples
///
/// ```no_run
/// use heli_core::{Granter, Supervisor};
/// use heli_grant::{ProcessSupervisor, YamaGranter};
/// use std::process::Command;
///
/// let mut supervisor = ProcessSupervisor::new(Command::new("python3"));
/// let target = supervisor.spawn()?;
/// let mut granter = YamaGranter::new(supervisor.child_waits());
/// let client = 4242; // the pid of the client process
/// granter.grant(target, client)?;
/// assert_eq!(granter.holder(target).map(|holder| holder.pid), Some(client));
/// granter.revoke(target)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct YamaGranter {
    injector: SyscallInjector,
    grants: HashMap<u32, Grant>,
    method: GrantMethod,
    timeout: Duration,
    last_method: Option<GrantMethod>,
}

/// How a [`YamaGranter`] has the target call `prctl(PR_SET_PTRACER)`.
/// Parses from and displays as `auto`, `ptrace`, `remote-exec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GrantMethod {
    /// Ptrace injection; remote execution when the injection is impossible
    /// (the target is already traced, or runs under seccomp).
    #[default]
    Auto,
    /// Ptrace injection only: works whatever the target runs and whatever
    /// it is doing.
    Ptrace,
    /// Remote execution only (PEP 768): a CPython 3.14 target runs the call
    /// itself, when one of its threads next executes Python code.
    RemoteExec,
}

/// How long a target gets to run a remote-executed grant by default.
const REMOTE_EXEC_TIMEOUT: Duration = Duration::from_secs(5);

/// The process a target named as its ptracer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its start time, in clock ticks after boot (`/proc/PID/stat` field
    /// 22): with the pid, it tells the process apart from a later one that
    /// reused the pid.
    pub start_time: u64,
}

impl Holder {
    /// The process `pid` as it is now.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) when there is no such process,
    /// or only its zombie: it has exited, and nobody has reaped it yet.
    pub fn current(pid: u32) -> io::Result<Holder> {
        Ok(Holder {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (not a later one with its pid).
    pub fn is_running(&self) -> bool {
        Holder::current(self.pid).is_ok_and(|now| now == *self)
    }
}

#[derive(Clone, Copy, Debug)]
struct Grant {
    target: Holder,
    holder: Holder,
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
    /// [allows seccomp](SyscallInjector::allow_seccomp)).
    pub fn with_injector(injector: SyscallInjector) -> Self {
        YamaGranter {
            injector,
            grants: HashMap::new(),
            method: GrantMethod::Auto,
            timeout: REMOTE_EXEC_TIMEOUT,
            last_method: None,
        }
    }

    /// Grants with `method` (default [`GrantMethod::Auto`]).
    pub fn method(mut self, method: GrantMethod) -> Self {
        self.method = method;
        self
    }

    /// How long a target gets to run a remote-executed grant (default 5 s).
    pub fn remote_exec_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
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
    pub fn holder(&self, target: u32) -> Option<Holder> {
        let grant = self.grants.get(&target)?;
        (grant.target.is_running() && grant.holder.is_running()).then_some(grant.holder)
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, ptracer)` by `method`;
    /// returns the method that made the call.
    fn set_ptracer(
        &mut self,
        target: u32,
        ptracer: u32,
        method: GrantMethod,
    ) -> io::Result<GrantMethod> {
        let what = format!("prctl(PR_SET_PTRACER, {ptracer}) in PID {target}");
        let cannot = |err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("cannot run {what} by ptrace injection: {err}"),
            )
        };
        if method == GrantMethod::RemoteExec {
            return self.by_remote_exec(target, ptracer).map(|()| method);
        }
        self.last_method = Some(GrantMethod::Ptrace);
        match self.by_ptrace(target, ptracer, &what) {
            Ok(result) => result.map(|()| GrantMethod::Ptrace),
            Err(err) if method == GrantMethod::Auto && injection_impossible(&err) => {
                warn!("{what}: ptrace injection impossible ({err}): falling back to remote exec");
                self.by_remote_exec(target, ptracer)
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

    /// Injects the call: `Err` when it could not be made, else what it
    /// returned.
    fn by_ptrace(&self, target: u32, ptracer: u32, what: &str) -> io::Result<io::Result<()>> {
        let injection = self.injector.inject(
            target,
            libc::SYS_prctl,
            &[PR_SET_PTRACER, u64::from(ptracer), 0, 0, 0],
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

    /// Has the target run the call itself (PEP 768) and report it.
    fn by_remote_exec(&mut self, target: u32, ptracer: u32) -> io::Result<()> {
        self.last_method = Some(GrantMethod::RemoteExec);
        let result = if ptracer == 0 {
            remote_prctl(target, libc::PR_SET_PTRACER, 0, self.timeout).map(drop)
        } else {
            remote_exec_prctl(target, ptracer, self.timeout)
        };
        match result {
            Ok(()) => {
                info!("prctl(PR_SET_PTRACER, {ptracer}) in PID {target} returned 0 (remote exec)");
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

/// Whether an injection failed because it cannot be made at all (another
/// tracer, seccomp), where remote execution may still work.
fn injection_impossible(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ResourceBusy | io::ErrorKind::PermissionDenied
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
        format!(
            "{what} failed with errno {errno} ({}: {}){meaning}",
            err,
            err.desc()
        ),
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

    fn holder_pid(&self, target: u32) -> Option<u32> {
        self.holder(target).map(|holder| holder.pid)
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, client)` by the
    /// [method](Self::method) chosen; succeeds when it returned 0. `client`
    /// may be a thread: its process is named.
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()> {
        let client = process_of(client)?;
        let holder = Holder::current(client)?;
        let target_now = Holder::current(target).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("target PID {target} is not running"),
            )
        })?;
        let method = self.set_ptracer(target, client, self.method)?;
        // The client may have exited in the meantime, and its pid gone to
        // another process: then take the grant back.
        if !holder.is_running() {
            warn!("client PID {client} exited during its grant: revoking");
            self.grants.remove(&target);
            let _ = self.set_ptracer(target, 0, method);
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("client PID {client} exited during its grant"),
            ));
        }
        let previous = self.grants.insert(
            target,
            Grant {
                target: target_now,
                holder,
                method,
            },
        );
        match previous {
            Some(old) if old.holder != holder && old.holder.is_running() => debug!(
                "PID {target} may now be ptraced by PID {client}, no longer by PID {}",
                old.holder.pid
            ),
            _ => debug!("PID {target} may now be ptraced by PID {client}"),
        }
        Ok(())
    }

    /// Has `target` call `prctl(PR_SET_PTRACER, 0)`, by the method that
    /// made its grant; a target that is gone has nothing left to revoke.
    fn revoke(&mut self, target: u32) -> io::Result<()> {
        let method = self
            .grants
            .get(&target)
            .map_or(self.method, |grant| grant.method);
        match self.set_ptracer(target, 0, method) {
            Ok(_) => {
                if let Some(old) = self.grants.remove(&target) {
                    info!(
                        "PID {target} may no longer be ptraced by PID {}",
                        old.holder.pid
                    );
                }
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.grants.remove(&target);
                debug!("nothing to revoke: {err}");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

impl FromStr for GrantMethod {
    type Err = io::Error;

    fn from_str(name: &str) -> io::Result<GrantMethod> {
        match name {
            "auto" => Ok(GrantMethod::Auto),
            "ptrace" => Ok(GrantMethod::Ptrace),
            "remote-exec" => Ok(GrantMethod::RemoteExec),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown grant method {name:?}: expected auto, ptrace or remote-exec"),
            )),
        }
    }
}

impl fmt::Display for GrantMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrantMethod::Auto => "auto",
            GrantMethod::Ptrace => "ptrace",
            GrantMethod::RemoteExec => "remote-exec",
        })
    }
}

/// The process `pid` belongs to (itself, unless it is a thread).
fn process_of(pid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with PID {pid}"),
        )
    })?;
    let tgid = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no Tgid")))?;
    if tgid != pid {
        debug!("PID {pid} is a thread of process {tgid}: naming the process");
    }
    Ok(tgid)
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// after boot.
fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with PID {pid}"),
        )
    })?;
    match parse_stat(&stat) {
        Some(('Z' | 'X', _)) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("PID {pid} has exited"),
        )),
        Some((_, start_time)) => Ok(start_time),
        None => Err(io::Error::other(format!(
            "/proc/{pid}/stat: unexpected content"
        ))),
    }
}

/// The state (field 3) and the start time (field 22) of a `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it follow the last ')'. Field 3 comes first there.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(22 - 4)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_start_time() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 12345678 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn a_zombie_is_not_running() {
        // `cat` runs until its input closes.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let holder = Holder::current(child.id()).unwrap();
        assert!(holder.is_running());
        drop(child.stdin.take());
        // Exited, not yet reaped: a zombie, waitable still.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        nix::sys::wait::waitid(nix::sys::wait::Id::Pid(pid), flags).unwrap();
        assert!(!holder.is_running());
        let err = Holder::current(child.id()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        child.wait().unwrap();
    }

    #[test]
    fn knows_this_process() {
        let me = Holder::current(std::process::id()).unwrap();
        assert!(me.is_running());
        assert!(!Holder {
            start_time: me.start_time + 1,
            ..me
        }
        .is_running());
        assert_eq!(process_of(std::process::id()).unwrap(), std::process::id());
        assert_eq!(
            Holder::current(i32::MAX as u32).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn explains_errors() {
        let err = prctl_error("prctl(PR_SET_PTRACER, 5) in PID 4", libc::EINVAL);
        let text = err.to_string();
        assert!(text.contains("EINVAL") && text.contains("Yama"), "{text}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn parses_methods() {
        for method in [
            GrantMethod::Auto,
            GrantMethod::Ptrace,
            GrantMethod::RemoteExec,
        ] {
            assert_eq!(method.to_string().parse::<GrantMethod>().unwrap(), method);
        }
        assert_eq!(GrantMethod::RemoteExec.to_string(), "remote-exec");
        assert!("remote_exec".parse::<GrantMethod>().is_err());
        let granter = YamaGranter::new(ChildWaits::default()).method(GrantMethod::Ptrace);
        assert_eq!(granter.grant_method(), GrantMethod::Ptrace);
        assert_eq!(granter.last_method(), None);
    }

    #[test]
    fn refuses_missing_client() {
        let mut granter = YamaGranter::new(ChildWaits::default());
        let err = granter.grant(1, i32::MAX as u32).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(granter.holder(1), None);
    }
}
