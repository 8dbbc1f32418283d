//! `YamaGranter`'s grant methods on a real CPython 3.14 target. This
//! machine may have no Yama, where `prctl(PR_SET_PTRACER)` itself fails
//! with `EINVAL`: the tests check the mechanism (which method ran, and that
//! the call was made in the target), not the right it gives.
//!
//! Each test holds a global lock and a watchdog that aborts the run after
//! a minute.

mod common;

use common::{heli_dirs, serial, wait_for, Target, SOON};

use std::process::{Child, Command, Stdio};

use heli_core::{Deadline, Granter, Pid, ProcessId, Processes};
use heli_grant::{ChildWaits, GrantMethod, PtraceScope, YamaGranter};
use heli_proc::{Proc, ProcFs};

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Python 3.14 target busy in a pure-Python loop, once it runs it.
fn busy_target() -> Target {
    Target::python("print('ready', flush=True)\ni = 0\nwhile True:\n    i += 1\n")
}

/// Who traces `pid` (`TracerPid`), if anyone.
fn tracer_of(pid: Pid) -> Option<Pid> {
    Proc::open_existing(pid).unwrap().status().unwrap()?.tracer
}

/// `strace` attached to `pid` until dropped.
fn traced(pid: Pid) -> Killed {
    let strace = Command::new("strace")
        .args(["-o", "/dev/null", "-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace is needed to trace the target");
    let strace = Killed(strace);
    wait_for(&format!("strace to attach to {pid}"), || {
        tracer_of(pid) == Pid::new(strace.0.id())
    });
    strace
}

/// A [`busy_target`] that `strace` traces until dropped.
fn traced_busy_target() -> (Target, Killed) {
    let target = busy_target();
    let strace = traced(target.pid);
    (target, strace)
}

/// Who `pid` is now.
fn identity(pid: Pid) -> ProcessId {
    ProcFs.identity(pid).unwrap().expect("a running process")
}

/// This test process.
fn me() -> ProcessId {
    identity(Pid::this())
}

/// Without Yama the call fails with EINVAL; with Yama it succeeds.
fn has_yama() -> bool {
    PtraceScope::current().unwrap() != PtraceScope::NoYama
}

#[test]
fn remote_exec_runs_the_prctl_in_the_target() {
    let _serial = serial("remote_exec_runs_the_prctl_in_the_target");
    let target = busy_target();
    let pid = target.pid;
    let before = heli_dirs();
    let mut granter = YamaGranter::new(ChildWaits::default()).method(GrantMethod::RemoteExec);
    let result = granter.grant(identity(pid), me(), &Deadline::after(SOON));
    assert_eq!(granter.last_method(), Some(GrantMethod::RemoteExec));
    if has_yama() {
        result.unwrap();
        assert_eq!(granter.holder(identity(pid)), Some(me()));
        granter
            .revoke(identity(pid), &Deadline::after(SOON))
            .unwrap();
        assert_eq!(granter.last_method(), Some(GrantMethod::RemoteExec));
    } else {
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("by remote exec (PEP 768): "), "{text}");
        assert!(
            text.contains(&format!("in PID {pid} failed with errno 22 (EINVAL")),
            "{text}"
        );
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{text}");
        assert_eq!(granter.holder(identity(pid)), None);
    }
    let left: Vec<_> = heli_dirs()
        .into_iter()
        .filter(|dir| !before.contains(dir))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn auto_falls_back_to_remote_exec_when_the_target_is_traced() {
    let _serial = serial("auto_falls_back_to_remote_exec_when_the_target_is_traced");
    let (target, strace) = traced_busy_target();
    let pid = target.pid;
    let mut granter = YamaGranter::new(ChildWaits::default());
    assert_eq!(granter.grant_method(), GrantMethod::Auto);
    let result = granter.grant(identity(pid), me(), &Deadline::after(SOON));
    assert_eq!(granter.last_method(), Some(GrantMethod::RemoteExec));
    if has_yama() {
        result.unwrap();
    } else {
        let err = result.unwrap_err();
        let text = err.to_string();
        // The prctl ran and failed: not the injector's "already traced".
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{text}");
        assert!(text.contains("by remote exec (PEP 768): "), "{text}");
        assert!(text.contains("failed with errno 22 (EINVAL"), "{text}");
        // The reason for the fallback is given.
        let tracer = format!("already traced by PID {}", strace.0.id());
        assert!(text.starts_with("ptrace injection impossible ("), "{text}");
        assert!(text.contains(&tracer), "{text}");
    }
    assert_eq!(
        tracer_of(pid),
        Pid::new(strace.0.id()),
        "the tracer was disturbed"
    );
}

#[test]
fn ptrace_only_names_the_tracer_of_a_traced_target() {
    let _serial = serial("ptrace_only_names_the_tracer_of_a_traced_target");
    let (target, strace) = traced_busy_target();
    let pid = target.pid;
    let before = heli_dirs();
    let mut granter = YamaGranter::new(ChildWaits::default()).method(GrantMethod::Ptrace);
    let err = granter
        .grant(identity(pid), me(), &Deadline::after(SOON))
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{text}");
    assert!(text.contains("by ptrace injection"), "{text}");
    assert!(
        text.contains(&format!("already traced by PID {}", strace.0.id())),
        "{text}"
    );
    assert_eq!(granter.last_method(), Some(GrantMethod::Ptrace));
    assert_eq!(heli_dirs(), before, "remote exec was tried");
}
