//! The granter for Yama's `ptrace_scope=1`: `prctl(PR_SET_PTRACER)` run by
//! the target, injected by its parent.

use std::collections::HashMap;
use std::fs;
use std::io;

use heli_core::Granter;
use log::{debug, info, warn};
use nix::errno::Errno;

use crate::process::ChildWaits;
use crate::ptrace_inject::SyscallInjector;

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
}

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
    /// [`NotFound`](io::ErrorKind::NotFound) when there is no such process.
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
        }
    }

    /// The client that now holds the right to ptrace `target`, if any.
    ///
    /// Checked against the running processes on every call: `None` once the
    /// holder exited (Yama then forgets it too) or the target did.
    pub fn holder(&self, target: u32) -> Option<Holder> {
        let grant = self.grants.get(&target)?;
        (grant.target.is_running() && grant.holder.is_running()).then_some(grant.holder)
    }

    fn set_ptracer(&self, target: u32, ptracer: u32) -> io::Result<()> {
        let what = format!("prctl(PR_SET_PTRACER, {ptracer}) in PID {target}");
        let injection = self
            .injector
            .inject(
                target,
                libc::SYS_prctl,
                &[PR_SET_PTRACER, u64::from(ptracer), 0, 0, 0],
            )
            .map_err(|err| io::Error::new(err.kind(), format!("cannot run {what}: {err}")))?;
        match injection.ret {
            0 => {
                debug!("{what} returned 0 (thread {})", injection.tid);
                Ok(())
            }
            ret if ret < 0 => Err(prctl_error(&what, -ret as i32)),
            ret => Err(io::Error::other(format!("{what} returned {ret}"))),
        }
    }
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

    fn holder_pid(&self, target: u32) -> Option<u32> {
        self.holder(target).map(|holder| holder.pid)
    }

    /// Injects `prctl(PR_SET_PTRACER, client)` into `target`; succeeds when
    /// it returned 0. `client` may be a thread: its process is named.
    fn grant(&mut self, target: u32, client: u32) -> io::Result<()> {
        let client = process_of(client)?;
        let holder = Holder::current(client)?;
        let target_now = Holder::current(target).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("target PID {target} is not running"),
            )
        })?;
        self.set_ptracer(target, client)?;
        // The client may have exited in the meantime, and its pid gone to
        // another process: then take the grant back.
        if !holder.is_running() {
            warn!("client PID {client} exited during its grant: revoking");
            self.grants.remove(&target);
            let _ = self.set_ptracer(target, 0);
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

    /// Injects `prctl(PR_SET_PTRACER, 0)` into `target`; a target that is
    /// gone has nothing left to revoke.
    fn revoke(&mut self, target: u32) -> io::Result<()> {
        match self.set_ptracer(target, 0) {
            Ok(()) => {
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
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: unexpected content")))
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it follow the last ')'. Field 3 comes first there.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 12345678 300 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("1 (x) S 0"), None);
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
    fn refuses_missing_client() {
        let mut granter = YamaGranter::new(ChildWaits::default());
        let err = granter.grant(1, i32::MAX as u32).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(granter.holder(1), None);
    }
}
