//! Targets started by heli-grant's own supervisor, as the injector and the
//! granter meet them in service.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use crossbeam_channel::Receiver;
use heli_core::{Deadline, Exit, Pid, ProcessId, Processes, Supervisor};
use heli_grant::{ChildWaits, ProcessSupervisor, SyscallInjector};
use heli_proc::Proc;
use nix::fcntl::OFlag;

use super::serial::SOON;
use super::target::Lines;

/// A supervised target whose stdout lines we read and stdin we write;
/// killed when dropped, unless its exit was taken.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub(crate) pid: Pid,
    pub(crate) proc: Proc,
    pub(crate) lines: Lines,
    pub(crate) stdin: File,
    supervisor: ProcessSupervisor,
    exits: Receiver<Exit>,
    exited: bool,
}

impl Supervised {
    /// Starts `program` with `args`, and waits for its first line, which
    /// must be `ready`.
    pub(crate) fn start(program: impl AsRef<OsStr>, args: &[&str]) -> Supervised {
        let (stdin_read, stdin_write) = pipe();
        let (stdout_read, stdout_write) = pipe();
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::from(stdout_write));
        let mut supervisor = ProcessSupervisor::new(command);
        let exits = supervisor.exits();
        let pid = supervisor.spawn().unwrap();
        let target = Supervised {
            pid,
            proc: Proc::open_existing(pid).unwrap(),
            lines: Lines::read(pid, File::from(stdout_read)),
            stdin: File::from(stdin_write),
            supervisor,
            exits,
            exited: false,
        };
        assert_eq!(target.lines.line(), "ready");
        target
    }

    /// The waits its supervisor shares with injectors.
    pub(crate) fn waits(&self) -> ChildWaits {
        self.supervisor.child_waits()
    }

    /// An injector that shares those waits.
    pub(crate) fn injector(&self) -> SyscallInjector {
        SyscallInjector::new(self.waits())
    }

    /// Kills it, as its supervisor does ([`Supervisor::kill`]).
    pub(crate) fn kill(&mut self) -> std::io::Result<()> {
        self.supervisor.kill()
    }

    /// Fails, naming `when`, if the reaper has seen it exit.
    pub(crate) fn assert_alive(&self, when: &str) {
        if let Ok(exit) = self.exits.try_recv() {
            panic!("PID {} exited {when}: {exit:?}", self.pid);
        }
    }

    /// How it ended, as the reaper reports it within [`SOON`].
    pub(crate) fn exit(&mut self) -> Exit {
        let exit = self
            .exits
            .recv_timeout(SOON)
            .unwrap_or_else(|err| panic!("the reaper reported no exit of PID {}: {err}", self.pid));
        self.exited = true;
        exit
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.supervisor.kill();
            let _ = self.exits.recv_timeout(SOON);
        }
    }
}

/// Who runs as `pid` now (the identity an injector is given).
pub(crate) fn identity(pid: Pid) -> ProcessId {
    heli_proc::ProcFs
        .identity(pid)
        .unwrap()
        .unwrap_or_else(|| panic!("PID {pid} is not running"))
}

/// An injected `getpid` in `pid` returns `pid`.
pub(crate) fn getpid_answers(injector: &SyscallInjector, pid: Pid) {
    assert_eq!(
        injector
            .syscall(identity(pid), libc::SYS_getpid, &[], &Deadline::after(SOON))
            .unwrap(),
        u64::from(pid)
    );
}

/// A pipe whose ends close on exec (the child gets its end as stdin or
/// stdout).
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
}
