//! When every real-time signal the injector could take for its tracer
//! threads' timers is handled already (here: ignored, before the first
//! injection), its waits for stops poll instead of blocking: injections
//! still work, and still end by their deadline.
//!
//! A test file of its own: the injector picks its signal once per process.

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use common::{getpid_answers, identity, serial};

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Deadline, Supervisor};
use heli_grant::{ProcessSupervisor, SyscallInjector};

/// The candidates: the eight highest real-time signals.
fn take_every_candidate() {
    for signal in (libc::SIGRTMIN() + 8..=libc::SIGRTMAX()).rev().take(8) {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this
        // test program uses these signals.
        let old = unsafe { libc::signal(signal, libc::SIG_IGN) };
        assert_ne!(old, libc::SIG_ERR, "signal {signal}");
    }
}

/// A tracee's `TracerPid`.
fn tracer(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn injections_poll_when_no_signal_is_free() {
    let _serial = serial("injections_poll_when_no_signal_is_free");
    take_every_candidate();
    let mut command = Command::new("sleep");
    command.arg("600");
    let mut supervisor = ProcessSupervisor::new(command);
    let pid = supervisor.spawn().unwrap();
    let injector = SyscallInjector::new(supervisor.child_waits());
    for _ in 0..50 {
        getpid_answers(&injector, pid);
    }
    // Frozen (cgroup v1), it is let go at the deadline all the same.
    let freezer = PathBuf::from("/sys/fs/cgroup/freezer");
    if freezer.join("cgroup.procs").exists() {
        let dir = freezer.join(format!("heli-polling-{}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        fs::write(dir.join("freezer.state"), "FROZEN").unwrap();
        while fs::read_to_string(dir.join("freezer.state"))
            .unwrap()
            .trim()
            != "FROZEN"
        {
            thread::sleep(Duration::from_millis(2));
        }
        let start = Instant::now();
        let deadline = Deadline::after(Duration::from_millis(300));
        let err = injector
            .syscall(identity(pid), libc::SYS_getpid, &[], &deadline)
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("frozen"), "{err}");
        assert!(took < Duration::from_millis(800), "took {took:?}");
        assert_eq!(tracer(pid.get()), "0");
        fs::write(dir.join("freezer.state"), "THAWED").unwrap();
        fs::write(freezer.join("cgroup.procs"), pid.to_string()).unwrap();
        fs::remove_dir(&dir).unwrap();
        getpid_answers(&injector, pid);
    } else {
        panic!("this test needs root and a cgroup v1 freezer (/sys/fs/cgroup/freezer)");
    }
    // No tracer thread made a timer, and the signals are still ours.
    let timers = fs::read_to_string("/proc/self/timers").unwrap();
    assert!(timers.is_empty(), "{timers}");
    for signal in (libc::SIGRTMIN() + 8..=libc::SIGRTMAX()).rev().take(8) {
        // SAFETY: an all-zero sigaction is valid storage; a NULL new action
        // only reads the current one.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::sigaction(signal, std::ptr::null(), &mut action) },
            0
        );
        assert_eq!(action.sa_sigaction, libc::SIG_IGN, "signal {signal}");
    }
    supervisor.kill().unwrap();
}
