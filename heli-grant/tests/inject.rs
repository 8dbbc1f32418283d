//! System call injection into real processes: every state a target may be
//! in, signals arriving meanwhile, seccomp, and the reaper's exit statuses.
//!
//! The targets are Python one-liners (`$HELI_PYTHON`, or the project's
//! Python 3.14) and a small C helper built here with `cc` (for a busy
//! C loop, signal handlers that report their sender, and seccomp filters).
//! Each test holds a global lock (ptrace and timing tests must not overlap)
//! and a watchdog that aborts the run after a minute.

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use common::{
    build_c, getpid_answers, identity, python314, serial, wait_for, Supervised as Target,
    FILTER_PRCTL_C, SOON,
};

use std::fs;
use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use heli_core::{Deadline, Exit, ExitStatus, Granter, Pid, ProcessId, ProcessState, Supervisor};
use heli_grant::{
    GrantMethod, Injection, ProcessSupervisor, PtraceScope, SyscallInjector, YamaGranter,
};
use heli_proc::{Proc, Syscall};

// ---------------------------------------------------------------- harness

/// The C helper, after [`FILTER_PRCTL_C`].
const HELPER_C: &str = r#"
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static void put(const char *s) { (void)!write(1, s, strlen(s)); }

static char *num(char *p, long v) {
    char digits[24]; int n = 0;
    if (v < 0) { *p++ = '-'; v = -v; }
    do { digits[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) *p++ = digits[--n];
    return p;
}

/* Async-signal-safe: "sig=N pid=N code=N\n". */
static void on_signal(int sig, siginfo_t *info, void *ctx) {
    char line[96], *p = line;
    (void)ctx;
    memcpy(p, "sig=", 4); p = num(p + 4, sig);
    memcpy(p, " pid=", 5); p = num(p + 5, info->si_pid);
    memcpy(p, " code=", 6); p = num(p + 6, info->si_code);
    *p++ = '\n';
    (void)!write(1, line, p - line);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "busy")) {
        put("ready\n");
        for (;;) __asm__ volatile("" ::: "memory");
    }
    if (!strcmp(mode, "signals-busy") || !strcmp(mode, "signals-sleep")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGRTMIN + 1, &sa, NULL);
        put("ready\n");
        if (!strcmp(mode, "signals-busy"))
            for (;;) __asm__ volatile("" ::: "memory");
        for (;;) {
            struct timespec ts = { 600, 0 };
            nanosleep(&ts, NULL);
        }
    }
    if (!strncmp(mode, "seccomp-", 8)) {
        if (!strcmp(mode, "seccomp-errno")) filter_prctl(SECCOMP_RET_ERRNO | EPERM);
        else if (!strcmp(mode, "seccomp-trap")) filter_prctl(SECCOMP_RET_TRAP);
        else filter_prctl(SECCOMP_RET_KILL_PROCESS);
        put("ready\n");
        for (;;) pause();
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
"#;

/// The targets here: supervised, their stdout read, their stdin ours.
impl Target {
    fn python(code: &str) -> Target {
        Target::start(python314(), &["-c", code, "heli-named"])
    }

    /// Python asleep for ten minutes, once it is.
    fn asleep() -> Target {
        let target = Target::python(SLEEP_PY);
        target.wait_in(target.pid, SLEEPS);
        target
    }

    fn helper(mode: &str) -> Target {
        let helper = build_c(
            "heli-inject-helper",
            &[FILTER_PRCTL_C, HELPER_C].concat(),
            &[],
        );
        Target::start(helper, &[mode, "heli-named"])
    }

    /// Its threads, in order of their ids.
    fn threads(&self) -> Vec<Pid> {
        let mut tids = self.proc.threads().unwrap();
        tids.sort();
        tids
    }

    /// Waits until thread `tid` is blocked in one of `calls`.
    fn wait_in(&self, tid: Pid, calls: &[libc::c_long]) {
        wait_for(&format!("thread {tid} in one of {calls:?}"), || {
            blocked_in(&self.proc, tid, calls)
        });
    }

    fn state(&self) -> ProcessState {
        self.proc.status().unwrap().expect("a running target").state
    }
}

/// A deadline no healthy injection comes near.
fn soon() -> Deadline {
    Deadline::after(SOON)
}

/// Whether thread `tid` of `proc` is blocked in one of `calls`.
fn blocked_in(proc: &Proc, tid: Pid, calls: &[libc::c_long]) -> bool {
    matches!(proc.thread_syscall(tid), Ok(Some(Syscall::In(nr))) if calls.contains(&nr))
}

/// Field `n` (from 1) of `/proc/PID/stat`, for what heli-proc does not
/// read: the process group (5), user time (14), where the arguments start
/// (48).
fn stat_field(pid: Pid, n: usize) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(n - 3).unwrap().to_owned()
}

/// Where the target's argument `arg` lies in its memory (its argv area).
fn argument_address(pid: Pid, arg: &str) -> u64 {
    let start: u64 = stat_field(pid, 48).parse().unwrap();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let needle = format!("\0{arg}\0");
    let offset = cmdline
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
        .unwrap_or_else(|| panic!("{arg:?} not among the arguments of PID {pid}"));
    start + offset as u64 + 1
}

/// This test process.
fn me() -> ProcessId {
    identity(Pid::this())
}

/// Python that sleeps ten minutes, and says so if woken early.
const SLEEP_PY: &str = "import time\nprint('ready', flush=True)\ntime.sleep(600)\nprint('woke')";

const SLEEPS: &[libc::c_long] = &[libc::SYS_clock_nanosleep, libc::SYS_nanosleep];

#[cfg(target_arch = "x86_64")]
const EPOLLS: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait];
#[cfg(not(target_arch = "x86_64"))]
const EPOLLS: &[libc::c_long] = &[libc::SYS_epoll_pwait];

/// Injects `prctl(PR_GET_DUMPABLE)` into `pid`.
fn get_dumpable(injector: &SyscallInjector, pid: Pid) -> std::io::Result<Injection> {
    injector.inject(
        identity(pid),
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
        &soon(),
    )
}

/// Injects calls whose results and effects can be checked from outside.
fn exercise(target: &Target) {
    let pid = target.pid;
    let injector = target.injector();
    for _ in 0..20 {
        getpid_answers(&injector, pid);
    }
    assert_eq!(get_dumpable(&injector, pid).unwrap().ret, 1);
    // An errno comes back as the call's result, and as an error.
    let injection = injector
        .inject(identity(pid), libc::SYS_prctl, &[0x7fff_0000], &soon())
        .unwrap();
    assert_eq!(injection.ret, -i64::from(libc::EINVAL));
    let err = injector
        .syscall(identity(pid), libc::SYS_prctl, &[0x7fff_0000], &soon())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    // setpgid(0, 0): a process-wide effect, seen in /proc/PID/stat.
    assert_ne!(stat_field(pid, 5), pid.to_string());
    assert_eq!(
        injector
            .syscall(identity(pid), libc::SYS_setpgid, &[0, 0], &soon())
            .unwrap(),
        0
    );
    assert_eq!(stat_field(pid, 5), pid.to_string());
    // PR_SET_NAME reads a string in the target's memory: its own argument.
    let name = argument_address(pid, "heli-named");
    let injection = injector
        .inject(
            identity(pid),
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, name],
            &soon(),
        )
        .unwrap();
    assert_eq!(injection.ret, 0);
    let name = target.proc.thread_name(injection.tid.into());
    assert_eq!(name.as_deref(), Some("heli-named"));
}

// ---------------------------------------------------------------- states

const BUSY_PY: &str = "
print('ready', flush=True)
i = 0
while True:
    i += 1
    if i % 300000 == 0:
        print(i, flush=True)
";

#[test]
fn python_running_bytecode() {
    let _serial = serial("python_running_bytecode");
    let target = Target::python(BUSY_PY);
    exercise(&target);
    // Still counting, from where it was.
    let a: u64 = target.lines.line().parse().unwrap();
    let b: u64 = target.lines.line().parse().unwrap();
    assert!(b > a);
}

#[test]
fn python_in_long_sleep() {
    let _serial = serial("python_in_long_sleep");
    let target = Target::asleep();
    exercise(&target);
    // Back in the same sleep, not woken early.
    target.wait_in(target.pid, SLEEPS);
    target.lines.none_within(Duration::from_millis(200));
    assert_eq!(target.state(), ProcessState::Sleeping);
}

/// A process named by its pid and a start time that is not its own (the
/// process asked for has exited, and its pid went to this one) is never
/// touched, by the injector or the granter: not seized, not stopped, its
/// call not made.
#[test]
fn a_process_with_the_pid_of_one_gone_is_never_touched() {
    let _serial = serial("a_process_with_the_pid_of_one_gone_is_never_touched");
    let target = Target::asleep();
    let pid = target.pid;
    let id = identity(pid);
    let gone = ProcessId {
        start_time: id.start_time - 1,
        ..id
    };
    let injector = target.injector();
    let group = stat_field(pid, 5);
    assert_ne!(group, pid.to_string());
    let err = injector
        .syscall(gone, libc::SYS_setpgid, &[0, 0], &soon())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("is gone"), "{err}");
    let mut granter = YamaGranter::new(target.waits()).method(GrantMethod::Ptrace);
    let err = granter.grant(gone, me(), &soon()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    // Untouched: its group, not traced, still in the same sleep.
    assert_eq!(stat_field(pid, 5), group);
    assert_eq!(target.proc.status().unwrap().unwrap().tracer, None);
    assert!(blocked_in(&target.proc, pid, SLEEPS));
    target.lines.none_within(Duration::from_millis(100));
    target.assert_alive("after the refusals");
    // By its own identity, the call is made (the check above can fail).
    assert_eq!(
        injector
            .syscall(id, libc::SYS_setpgid, &[0, 0], &soon())
            .unwrap(),
        0
    );
    assert_eq!(stat_field(pid, 5), pid.to_string());
}

#[test]
fn python_blocked_in_read() {
    let _serial = serial("python_blocked_in_read");
    let mut target = Target::python(
        "import os, time\nprint('ready', flush=True)\ndata = os.read(0, 100)\n\
         print(repr(data), flush=True)\ntime.sleep(600)",
    );
    target.wait_in(target.pid, &[libc::SYS_read]);
    exercise(&target);
    target.wait_in(target.pid, &[libc::SYS_read]);
    target.lines.none_within(Duration::from_millis(100));
    target.stdin.write_all(b"hello\n").unwrap();
    assert_eq!(target.lines.line(), r"b'hello\n'");
}

#[test]
fn busy_in_c_loop() {
    let _serial = serial("busy_in_c_loop");
    let target = Target::helper("busy");
    exercise(&target);
    let cpu = |pid| stat_field(pid, 14).parse::<u64>().unwrap();
    let before = cpu(target.pid);
    wait_for("the C loop to go on using the CPU", || {
        cpu(target.pid) > before + 5
    });
    assert_eq!(target.state(), ProcessState::Running);
}

#[test]
fn multi_threaded_python() {
    let _serial = serial("multi_threaded_python");
    // One os.write per line: lines from several threads never mix.
    let mut target = Target::python(
        "import os, threading, time
def busy():
    i = 0
    while True:
        i += 1
        if i % 300000 == 0:
            os.write(1, b'busy\\n')
def reader():
    os.write(1, b'read ' + os.read(0, 100))
threading.Thread(target=reader, daemon=True).start()
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
os.write(1, b'ready\\n')
threading.Thread(target=busy, daemon=True).start()
time.sleep(600)",
    );
    wait_for("four threads", || target.threads().len() == 4);
    exercise(&target);
    let injector = target.injector();
    let mut used = Vec::new();
    for _ in 0..50 {
        let injection = injector
            .inject(identity(target.pid), libc::SYS_getpid, &[], &soon())
            .unwrap();
        assert_eq!(injection.ret, i64::from(target.pid));
        used.push(injection.tid);
    }
    used.sort();
    used.dedup();
    eprintln!("threads {:?}; injected into {used:?}", target.threads());
    // All still at work: the busy one counts, the reader reads, sleepers sleep.
    assert_eq!(target.lines.skip_to("busy"), "busy");
    target.stdin.write_all(b"data\n").unwrap();
    assert_eq!(target.lines.skip_to("read data"), "read data");
    // Only the reader has finished.
    wait_for("three threads", || target.threads().len() == 3);
}

#[test]
fn prefers_a_thread_that_restarts_over_epoll_wait() {
    let _serial = serial("prefers_a_thread_that_restarts_over_epoll_wait");
    let target = Target::python(
        "import select, threading, time
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
ep = select.epoll()
print('ready', flush=True)
ep.poll(600)",
    );
    wait_for("two threads", || target.threads().len() == 2);
    let sleeper = *target
        .threads()
        .iter()
        .find(|&&tid| tid != target.pid)
        .unwrap();
    target.wait_in(target.pid, EPOLLS);
    target.wait_in(sleeper, SLEEPS);
    let injector = target.injector();
    for _ in 0..20 {
        let injection = injector
            .inject(identity(target.pid), libc::SYS_getpid, &[], &soon())
            .unwrap();
        assert_eq!(
            injection.tid, sleeper,
            "injected into the thread in epoll_wait"
        );
    }
    target.wait_in(target.pid, EPOLLS);
}

#[test]
fn stopped_target_stays_stopped() {
    let _serial = serial("stopped_target_stays_stopped");
    let target = Target::asleep();
    let pid = nix::unistd::Pid::from_raw(i32::from(target.pid));
    nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).unwrap();
    wait_for("the target to stop", || {
        target.state() == ProcessState::Stopped
    });
    let injector = target.injector();
    for _ in 0..10 {
        getpid_answers(&injector, target.pid);
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(target.state(), ProcessState::Stopped);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).unwrap();
    target.wait_in(target.pid, SLEEPS);
    target.lines.none_within(Duration::from_millis(100));
}

// ---------------------------------------------------------------- timing

/// 100 injections into `pid` spread over a 2 s sleep, which must end at
/// 2.0-2.2 s.
fn inject_during(injector: &SyscallInjector, pid: Pid) {
    for _ in 0..100 {
        getpid_answers(injector, pid);
        thread::sleep(Duration::from_millis(12));
    }
}

#[test]
fn python_sleep_ends_on_time() {
    let _serial = serial("python_sleep_ends_on_time");
    let target = Target::python(
        "import time\nprint('ready', flush=True)\nt = time.monotonic()\ntime.sleep(2)\n\
         print(time.monotonic() - t, flush=True)",
    );
    target.wait_in(target.pid, SLEEPS);
    inject_during(&target.injector(), target.pid);
    let slept: f64 = target.lines.line().parse().unwrap();
    assert!((2.0..2.2).contains(&slept), "slept {slept} s");
}

/// coreutils' sleep uses a relative nanosleep, restarted through
/// `restart_syscall` (an x86_64 fact: arm64 re-runs it from the start).
#[cfg(target_arch = "x86_64")]
#[test]
fn relative_nanosleep_ends_on_time() {
    let _serial = serial("relative_nanosleep_ends_on_time");
    let mut command = Command::new("sleep");
    command.arg("2");
    let mut supervisor = ProcessSupervisor::new(command);
    let exits = supervisor.exits();
    let start = Instant::now();
    let pid = supervisor.spawn().unwrap();
    let proc = Proc::open_existing(pid).unwrap();
    wait_for("sleep to sleep", || blocked_in(&proc, pid, SLEEPS));
    inject_during(&SyscallInjector::new(supervisor.child_waits()), pid);
    let exit = exits.recv_timeout(SOON).unwrap();
    let slept = start.elapsed().as_secs_f64();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert!((2.0..2.2).contains(&slept), "slept {slept} s");
}

// ---------------------------------------------------------------- signals

/// Sends a signal during each injection (as soon as the target shows a
/// tracing stop, or after a varying delay): every signal must reach the
/// target's handler once, with our pid as its sender.
fn signals_during_injections(mode: &str) {
    let target = Target::helper(mode);
    let pid = target.pid;
    let injector = target.injector();
    let (go, orders) = bounded::<(i32, Option<u32>)>(0);
    let proc = Proc::open_existing(pid).unwrap();
    let in_tracing_stop = move || {
        proc.status().unwrap().map(|status| status.state) == Some(ProcessState::TracingStop)
    };
    let sender = thread::spawn(move || {
        for (signal, delay_ns) in orders {
            let start = Instant::now();
            match delay_ns {
                Some(delay_ns) => {
                    while start.elapsed() < Duration::from_nanos(u64::from(delay_ns)) {}
                }
                None => while start.elapsed() < Duration::from_millis(20) && !in_tracing_stop() {},
            }
            // SAFETY: kill takes two integers (nix's `kill` has no real-time
            // signals).
            nix::errno::Errno::result(unsafe { libc::kill(i32::from(pid), signal) }).unwrap();
        }
    });
    let me = std::process::id();
    let rounds = 300;
    let mut seed = 0x2545_f491u32;
    let mut held = 0;
    for round in 0..rounds {
        let signal = if round % 2 == 0 {
            libc::SIGUSR1
        } else {
            libc::SIGRTMIN() + 1
        };
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let delay = (round % 4 >= 2).then_some((seed >> 8) % 80_000);
        go.send((signal, delay)).unwrap();
        let injection = injector
            .inject(identity(pid), libc::SYS_getpid, &[], &soon())
            .unwrap();
        assert_eq!(injection.ret, i64::from(pid));
        if !injection.redelivered.is_empty() {
            assert_eq!(injection.redelivered, [signal]);
            held += 1;
        }
        assert_eq!(
            target.lines.line(),
            format!("sig={signal} pid={me} code={}", libc::SI_USER)
        );
    }
    drop(go);
    sender.join().unwrap();
    target.lines.none_within(Duration::from_millis(300));
    eprintln!("{mode}: {held} of {rounds} signals arrived during an injection");
    assert!(
        held > 0,
        "no signal arrived during an injection: the test proved nothing"
    );
}

#[test]
fn signals_during_injection_into_busy_thread() {
    let _serial = serial("signals_during_injection_into_busy_thread");
    signals_during_injections("signals-busy");
}

#[test]
fn signals_during_injection_into_sleeping_thread() {
    let _serial = serial("signals_during_injection_into_sleeping_thread");
    signals_during_injections("signals-sleep");
}

// ---------------------------------------------------------------- seccomp

#[test]
fn seccomp_filtered_target_is_refused() {
    let _serial = serial("seccomp_filtered_target_is_refused");
    let target = Target::helper("seccomp-errno");
    let pid = target.pid;
    let err = target
        .injector()
        .inject(identity(pid), libc::SYS_getpid, &[], &soon())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("seccomp"), "{err}");
    let mut granter = YamaGranter::new(target.waits());
    let err = granter
        .grant(identity(pid), me(), &Deadline::after(SOON))
        .unwrap_err();
    assert!(err.to_string().contains("seccomp"), "{err}");
    // Allowed anyway, the filter's verdict shows as the call's errno.
    let injector = target.injector().allow_seccomp(true);
    getpid_answers(&injector, pid);
    let injection = get_dumpable(&injector, pid).unwrap();
    assert_eq!(injection.ret, -i64::from(libc::EPERM));
    // Back in pause(), alive.
    wait_for("the target to sleep again", || {
        target.state() == ProcessState::Sleeping
    });
}

/// The seccomp filter of `target` (a helper in a `seccomp-` mode) stops
/// `prctl`: injected with seccomp allowed, `prctl(PR_GET_DUMPABLE)` fails
/// with an error of `kind` that says `says`. Returns the injector.
fn filtered_prctl_fails(target: &Target, kind: std::io::ErrorKind, says: &str) -> SyscallInjector {
    let injector = target.injector().allow_seccomp(true);
    let err = get_dumpable(&injector, target.pid).unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.to_string().contains(says), "{err}");
    injector
}

#[test]
fn seccomp_trap_is_suppressed() {
    let _serial = serial("seccomp_trap_is_suppressed");
    let target = Target::helper("seccomp-trap");
    let injector = filtered_prctl_fails(&target, std::io::ErrorKind::PermissionDenied, "trapped");
    // No SIGSYS reached it: it lives on, and takes further calls.
    getpid_answers(&injector, target.pid);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(target.state(), ProcessState::Sleeping);
}

/// The injected call kills the target: the injector reaps it, and the
/// supervisor still reports how it ended.
#[test]
fn target_killed_by_the_injected_call_is_reported() {
    let _serial = serial("target_killed_by_the_injected_call_is_reported");
    let mut target = Target::helper("seccomp-kill");
    let killed = "exited during the grant";
    filtered_prctl_fails(&target, std::io::ErrorKind::NotFound, killed);
    let exit = target.exit();
    assert_eq!(
        exit,
        Exit {
            pid: target.pid,
            status: ExitStatus::Signal(libc::SIGSYS)
        }
    );
}

// ---------------------------------------------------------------- reaper

#[test]
fn reaper_keeps_exit_status_of_target_killed_during_injections() {
    let _serial = serial("reaper_keeps_exit_status_of_target_killed_during_injections");
    let rounds = 20;
    let mut reaped_by_injector = 0;
    for round in 0..rounds {
        let mut target = Target::python(BUSY_PY);
        let pid = target.pid;
        let injector = target.injector();
        // Taken once: read again after the kill, it would be gone.
        let id = identity(pid);
        let (started, first) = bounded(1);
        let worker = thread::spawn(move || {
            let mut done = 0;
            loop {
                match injector.inject(id, libc::SYS_getpid, &[], &soon()) {
                    Ok(injection) => {
                        assert_eq!(injection.ret, i64::from(pid));
                        done += 1;
                        let _ = started.try_send(());
                    }
                    Err(err) => return (done, err),
                }
            }
        });
        first.recv_timeout(SOON).expect("no injection succeeded");
        thread::sleep(Duration::from_millis(1 + round * 7 % 20));
        target.kill().unwrap();
        let exit = target.exit();
        assert_eq!(
            exit,
            Exit {
                pid,
                status: ExitStatus::Signal(libc::SIGKILL)
            }
        );
        let (done, err) = worker.join().unwrap();
        assert!(done > 0);
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        if err.to_string().contains("during the grant") {
            reaped_by_injector += 1;
        }
    }
    eprintln!("the injector reaped the target in {reaped_by_injector} of {rounds} rounds");
}

// ---------------------------------------------------------------- granter

#[test]
fn yama_granter_on_this_kernel() {
    let _serial = serial("yama_granter_on_this_kernel");
    let target = Target::python(SLEEP_PY);
    let pid = identity(target.pid);
    let me = me();
    let mut granter = YamaGranter::new(target.waits());
    assert_eq!(granter.name(), "yama");
    if PtraceScope::current().unwrap() == PtraceScope::NoYama {
        // prctl(PR_SET_PTRACER) itself fails without Yama: the error says so.
        let err = granter.grant(pid, me, &Deadline::after(SOON)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("EINVAL") && text.contains("Yama"), "{text}");
        assert_eq!(granter.holder(pid), None);
        assert!(granter
            .revoke(pid, &Deadline::after(SOON))
            .unwrap_err()
            .to_string()
            .contains("EINVAL"));
    } else {
        granter.grant(pid, me, &Deadline::after(SOON)).unwrap();
        assert_eq!(granter.holder(pid), Some(me));
        granter.revoke(pid, &Deadline::after(SOON)).unwrap();
        assert_eq!(granter.holder(pid), None);
    }
    let nobody = ProcessId {
        pid: Pid::new(i32::MAX as u32).unwrap(),
        start_time: 1,
    };
    let err = granter
        .grant(pid, nobody, &Deadline::after(SOON))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    target.wait_in(target.pid, SLEEPS);
    target.lines.none_within(Duration::from_millis(100));
}
