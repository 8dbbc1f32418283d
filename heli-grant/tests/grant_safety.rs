//! What a `YamaGranter` refuses to do to a process, whatever the grant
//! method: inject into (or have run a script in) a process under a seccomp
//! filter, which could kill it; act on a process that changed user, or
//! left the controller's tree, since the grant was asked. Each refusal
//! leaves the process running and untouched.
//!
//! The targets are Python 3.14 children (a remote execution would have
//! them make the call themselves). Each test holds a global lock and a
//! watchdog that aborts the run after a minute.

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use common::{getpid_answers, heli_dirs, identity, python314, serial, Supervised, SOON};

use std::io;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use heli_core::{Deadline, Granter, Pid, ProcessId, Processes};
use heli_grant::{GrantMethod, YamaGranter};
use heli_proc::Proc;

/// `prctl` and `seccomp`, by number on this processor.
#[cfg(target_arch = "x86_64")]
const NR: (u32, u32) = (157, 317);
#[cfg(target_arch = "aarch64")]
const NR: (u32, u32) = (167, 277);

/// Python that gives its only thread a seccomp filter that kills the
/// process on any `prctl` (a sandboxed worker: its policy forbids changing
/// who may ptrace it), then runs Python code every 20 ms: a remote
/// execution would have it run a script soon.
fn sandboxed_py() -> String {
    let (prctl, seccomp) = NR;
    format!(
        r#"
import ctypes, struct, time
libc = ctypes.CDLL(None, use_errno=True)
program = [
    (0x20, 0, 0, 0),            # load the call's number
    (0x15, 0, 1, {prctl}),      # prctl?
    (0x06, 0, 0, 0x80000000),   # then SECCOMP_RET_KILL_PROCESS
    (0x06, 0, 0, 0x7fff0000),   # else SECCOMP_RET_ALLOW
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
filter = Program(len(program), ctypes.addressof(code))
assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
assert libc.syscall({seccomp}, 1, 0, ctypes.byref(filter)) == 0, ctypes.get_errno()
print("ready", flush=True)
while True:
    time.sleep(0.02)
"#
    )
}

/// Python that drops to user nobody, then sleeps in a loop.
const NOBODY_PY: &str = r#"
import os, time
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
print("ready", flush=True)
while True:
    time.sleep(0.02)
"#;

/// This test process.
fn me() -> ProcessId {
    identity(Pid::this())
}

/// Who traces `pid` (`TracerPid`), if anyone.
fn tracer_of(pid: Pid) -> Option<Pid> {
    Proc::open_existing(pid).unwrap().status().unwrap()?.tracer
}

/// A grant on `target` by `method`, which must fail.
fn refused(target: &Supervised, method: GrantMethod) -> io::Error {
    let mut granter = YamaGranter::new(target.waits()).method(method);
    granter
        .grant(identity(target.pid), me(), &Deadline::after(SOON))
        .expect_err("the grant was made")
}

#[test]
fn a_process_under_seccomp_gets_no_grant_by_any_method_and_lives() {
    let _serial = serial("a_process_under_seccomp_gets_no_grant_by_any_method_and_lives");
    let target = Supervised::start(python314(), &["-c", &sandboxed_py()]);
    let pid = target.pid;
    let status = target.proc.status().unwrap().unwrap();
    assert_eq!(status.seccomp, 2, "the filter is not on");
    let before = heli_dirs();
    let expected =
        format!("PID {pid} runs under a seccomp filter: heli injects nothing into it (the filter could kill it)");
    for method in [
        GrantMethod::Auto,
        GrantMethod::Ptrace,
        GrantMethod::RemoteExec,
    ] {
        let err = refused(&target, method);
        let text = err.to_string();
        assert!(text.starts_with(&expected), "{method}: {text}");
        assert_eq!(
            err.kind(),
            io::ErrorKind::PermissionDenied,
            "{method}: {text}"
        );
        // A remote execution would have had it make the call (and die)
        // within a few of its 20 ms loops.
        thread::sleep(Duration::from_millis(200));
        target.assert_alive(&format!("after a grant by {method}"));
        assert_eq!(tracer_of(pid), None, "{method}");
        assert_eq!(heli_dirs(), before, "{method}: remote exec was tried");
    }
    // Alive, and answering: a call its filter lets through.
    getpid_answers(&target.injector().allow_seccomp(true), pid);
}

#[test]
fn a_process_that_changed_user_gets_no_grant_after_the_seize() {
    let _serial = serial("a_process_that_changed_user_gets_no_grant_after_the_seize");
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test has a child change user: run it as root (CI does)"
    );
    // It dropped to nobody after it started, as if between a request and
    // its injection: the granter itself checks nothing before the seize,
    // so only the check after it stands in the way.
    let target = Supervised::start(python314(), &["-c", NOBODY_PY]);
    let pid = target.pid;
    let info = target.proc.info().unwrap().unwrap();
    assert_eq!((info.uid, info.euid), (65534, 65534));
    let before = heli_dirs();
    let expected =
        format!("PID {pid} changed user (it runs as another user (uid 65534, euid 65534; ");
    for method in [
        GrantMethod::Auto,
        GrantMethod::Ptrace,
        GrantMethod::RemoteExec,
    ] {
        let err = refused(&target, method);
        let text = err.to_string();
        assert!(text.contains(&expected), "{method}: {text}");
        assert!(
            !text.contains("errno"),
            "{method}: the call was made: {text}"
        );
        assert_eq!(
            err.kind(),
            io::ErrorKind::PermissionDenied,
            "{method}: {text}"
        );
        target.assert_alive(&format!("after a grant by {method}"));
        assert_eq!(tracer_of(pid), None, "{method}: still traced");
        assert_eq!(heli_dirs(), before, "{method}: remote exec was tried");
    }
}

#[test]
fn a_process_that_left_the_tree_gets_no_grant_after_the_seize() {
    let _serial = serial("a_process_that_left_the_tree_gets_no_grant_after_the_seize");
    // A sleep whose parent exited: re-parented away from this process.
    let shell = Command::new("sh")
        .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let orphan: u32 = String::from_utf8(shell.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let orphan = Pid::new(orphan).unwrap();
    let id = identity(orphan);
    let mut granter =
        YamaGranter::new(heli_grant::ChildWaits::default()).method(GrantMethod::Ptrace);
    let result = granter.grant(id, me(), &Deadline::after(SOON));
    let alive = heli_proc::ProcFs.is_running(id);
    let traced = tracer_of(orphan);
    // A revoke only takes a right back: made wherever the process is.
    let revoked = granter.revoke(id, &Deadline::after(SOON));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan.get() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let err = result.expect_err("the grant was made");
    let text = err.to_string();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{text}");
    if nix::unistd::geteuid().is_root() {
        let expected = format!(
            "PID {orphan} left the tree (it is no longer a descendant of the controller, PID {}",
            Pid::this()
        );
        assert!(text.contains(&expected), "{text}");
        match heli_grant::PtraceScope::current().unwrap() {
            // prctl(PR_SET_PTRACER, 0) ran, and failed without Yama.
            heli_grant::PtraceScope::NoYama => {
                let err = revoked.unwrap_err().to_string();
                assert!(err.contains("failed with errno 22"), "{err}");
            }
            _ => revoked.unwrap(),
        }
    } else {
        // Yama may refuse the seize itself; either way, nothing was made.
        assert!(
            text.contains("left the tree") || text.contains("cannot ptrace"),
            "{text}"
        );
    }
    assert!(alive, "the orphan died");
    assert_eq!(traced, None, "still traced");
}
