//! Target safety under injection: every injection ends by its deadline,
//! and none harms its target, whatever state the target is in.
//!
//! Frozen targets (cgroup v1 and v2 freezers) and threads in
//! uninterruptible sleep (a `vfork` parent) are let go untouched at the
//! deadline; a thread that hangs in the middle of the call keeps its
//! registers until it stops again; a storm of real-time signals never gets
//! the target killed, and every signal arrives; an rseq critical section
//! aborts as after a plain stop; a thread under Syscall User Dispatch is
//! refused; another thread's `execve` ends no wait in a hang; a process
//! whose main thread exited is alive; a thread in `io_uring_enter` is taken
//! last; a thread killed during the call is reported as a thread.
//!
//! The targets are modes of one C program built here with `cc`. Each test
//! holds the global test lock and a one-minute watchdog; an injection that
//! does not return two seconds after its deadline fails its test.

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use common::{build_c, identity, serial, wait_for, Supervised as Target, FILTER_PRCTL_C, SOON};

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Deadline, Granter, Pid, Processes};
use heli_grant::{Injection, SyscallInjector, YamaGranter};
use heli_proc::ProcFs;

// ---------------------------------------------------------------- harness

/// The C program, after [`FILTER_PRCTL_C`].
const SAFETY_C: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <sys/auxv.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#ifdef __x86_64__
#include <sys/rseq.h>
#endif

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_ON 1
#define SYSCALL_DISPATCH_FILTER_ALLOW 0
#define SYSCALL_DISPATCH_FILTER_BLOCK 1
#endif

/* One write(2) per line: lines from several threads never mix. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    (void)!write(1, line, n);
}

static void nap(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* Ticks every 20 ms, forever, from the calling thread. */
static void tick(void) {
    for (long n = 0;; n++) {
        nap(20);
        say("tick %ld", n);
    }
}

static void *sleeper(void *arg) { (void)arg; for (;;) nap(600000); return NULL; }

/* The main thread waits in vfork (state D) for a child that sleeps `ms`. */
static void vfork_for(long ms) {
    pid_t child = vfork();
    if (child == 0) {
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        syscall(SYS_nanosleep, &ts, NULL);
        _exit(0);
    }
}

static void *vforker(void *arg) {
    vfork_for((long)arg);
    say("resumed");
    for (;;) nap(600000);
    return NULL;
}

static void *execer(void *arg) {
    nap((long)arg);
    execlp("sleep", "sleep", "9", (char *)NULL);
    say("exec failed");
    return NULL;
}

/* A timespec the test may pass to an injected nanosleep. */
static struct timespec half_second = { 0, 500000000L };

/* Real-time signals counted by their handler. */
static volatile sig_atomic_t counted;
static void count(int sig) { (void)sig; counted++; }

static void *filtered_busy(void *arg) {
    (void)arg;
    filter_prctl(SECCOMP_RET_KILL_THREAD);
    say("ready");
    for (;;) __asm__ volatile("" ::: "memory");
    return NULL;
}

static void *announce_after_main_exit(void *arg) {
    (void)arg;
    nap(100);
    say("ready");
    char line[64];
    while (read(0, line, sizeof line) > 0) say("alive");
    return NULL;
}

#ifdef __x86_64__
/* Aborts of the critical section below. */
static volatile uint64_t aborts;

/* Sits in one rseq critical section forever: `1: jmp 1b` loops inside
   it; each abort (preemption, signal, migration) counts and re-enters. */
static void sit_in_critical_section(void) {
    char *area = (char *)__builtin_thread_pointer() + __rseq_offset;
    __asm__ volatile(
        ".pushsection __rseq_cs, \"aw\"\n"
        ".balign 32\n"
        "3:\n"
        ".long 0, 0\n"
        ".quad 1f, 2f - 1f, 4f\n"
        ".popsection\n"
        "0:\n"
        "leaq 3b(%%rip), %%rax\n"
        "movq %%rax, 8(%[area])\n"
        "1:\n"
        "jmp 1b\n"
        "2:\n"
        ".long 0x53053053\n"
        "4:\n"
        "lock incq %[aborts]\n"
        "jmp 0b\n"
        : [aborts] "+m"(aborts)
        : [area] "r"(area)
        : "rax", "memory", "cc");
}
#endif

static volatile char selector = SYSCALL_DISPATCH_FILTER_ALLOW;
static void on_sigsys(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)ctx;
    say("sigsys code=%d nr=%d", info->si_code, info->si_syscall);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    pthread_t thread;
    if (!strcmp(mode, "tick")) {
        say("ready");
        say("timespec %p", (void *)&half_second);
        tick();
    }
    if (!strcmp(mode, "vfork")) {
        say("ready");
        vfork_for(atol(argv[2]));
        say("resumed");
        tick();
    }
    if (!strcmp(mode, "exec-main")) {
        /* The main thread waits in vfork; a second thread execs. */
        pthread_create(&thread, NULL, execer, (void *)atol(argv[2]));
        say("ready");
        vfork_for(5000);
        say("resumed");
        for (;;) nap(600000);
    }
    if (!strcmp(mode, "exec-thread")) {
        /* A second thread waits in vfork, a third execs; the main thread
           waits in epoll_wait (which the injector takes last). */
        pthread_create(&thread, NULL, vforker, (void *)5000L);
        nap(20);
        pthread_create(&thread, NULL, execer, (void *)atol(argv[2]));
        say("ready");
        int ep = epoll_create1(0);
        struct epoll_event ev;
        for (;;) epoll_wait(ep, &ev, 1, 600000);
    }
    if (!strcmp(mode, "storm")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = count;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGRTMIN + 2, &sa, NULL);
        say("ready");
        char line[64];
        while (read(0, line, sizeof line) > 0) say("count %ld", (long)counted);
        return 0;
    }
    if (!strcmp(mode, "zombie-main")) {
        pthread_create(&thread, NULL, announce_after_main_exit, NULL);
        pthread_create(&thread, NULL, sleeper, NULL);
        pthread_exit(NULL);
    }
    if (!strcmp(mode, "io-uring")) {
        /* The main thread waits in io_uring_enter, a second thread sleeps. */
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        int ring = syscall(SYS_io_uring_setup, 4, &params);
        if (ring < 0) { perror("io_uring_setup"); return 1; }
        pthread_create(&thread, NULL, sleeper, NULL);
        say("ready");
        for (;;) {
            long ret = syscall(SYS_io_uring_enter, ring, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
            say("io_uring_enter returned %ld errno %d", ret, ret < 0 ? errno : 0);
        }
    }
    if (!strcmp(mode, "thread-killed")) {
        /* A second thread, busy, is killed by its own filter if it calls
           prctl; the main thread waits in epoll_wait. */
        pthread_create(&thread, NULL, filtered_busy, NULL);
        int ep = epoll_create1(0);
        struct epoll_event ev;
        for (;;) {
            int n = epoll_wait(ep, &ev, 1, 600000);
            if (n < 0) say("epoll_wait errno %d", errno);
        }
    }
#ifdef __x86_64__
    if (!strcmp(mode, "rseq")) {
        if (__rseq_size == 0) { say("no rseq"); return 1; }
        say("ready");
        say("aborts %p", (void *)&aborts);
        say("area %p", (void *)((char *)__builtin_thread_pointer() + __rseq_offset));
        sit_in_critical_section();
    }
#endif
    if (!strcmp(mode, "dispatch")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigsys;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSYS, &sa, NULL);
        /* System calls from below the vDSO (this program, the C library)
           are allowed; those from the vDSO are dispatched. */
        unsigned long vdso = getauxval(AT_SYSINFO_EHDR);
        if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, 0, vdso, &selector)) {
            perror("PR_SET_SYSCALL_USER_DISPATCH");
            return 1;
        }
        selector = SYSCALL_DISPATCH_FILTER_BLOCK;
        say("ready");
        for (;;) __asm__ volatile("" ::: "memory");
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
"#;

/// The targets here: the C program, supervised, its stdout read, its
/// stdin ours.
impl Target {
    /// Starts the C program in `mode`, and waits for its "ready".
    fn spawn(mode: &str, args: &[&str]) -> Target {
        let program = build_c(
            "heli-safety-helper",
            &[FILTER_PRCTL_C, SAFETY_C].concat(),
            &["-pthread"],
        );
        Target::start(program, &[&[mode], args].concat())
    }

    /// The value after `prefix` in the next line, which must start so.
    fn value(&self, prefix: &str) -> String {
        let line = self.lines.line();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} from PID {} is no {prefix:?}", self.pid))
            .to_owned()
    }

    fn threads(&self) -> Vec<Pid> {
        let mut tids: Vec<Pid> = fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        tids.sort();
        tids
    }

    /// A field of thread `tid`'s status file (`State`, `TracerPid`...).
    fn status(&self, tid: Pid, field: &str) -> String {
        let text = fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid)).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in the status of thread {tid}"))
            .trim()
            .to_owned()
    }

    /// Thread `tid`'s state letter.
    fn state(&self, tid: Pid) -> char {
        self.status(tid, "State").chars().next().unwrap()
    }

    /// Who traces thread `tid` (0: nobody).
    fn tracer(&self, tid: Pid) -> u32 {
        self.status(tid, "TracerPid").parse().unwrap()
    }

    /// The system call thread `tid` is blocked in, if any.
    fn syscall(&self, tid: Pid) -> Option<libc::c_long> {
        let text = fs::read_to_string(format!("/proc/{}/task/{tid}/syscall", self.pid)).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// Whether thread `tid` is blocked in one of `calls`.
    fn blocked_in(&self, tid: Pid, calls: &[libc::c_long]) -> bool {
        self.syscall(tid).is_some_and(|nr| calls.contains(&nr))
    }

    fn comm(&self) -> String {
        fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .unwrap()
            .trim_end()
            .to_owned()
    }

    /// Asserts that thread `tid` was let go: not traced, not in a tracing stop.
    fn assert_let_go(&self, tid: Pid) {
        assert_eq!(
            self.tracer(tid),
            0,
            "thread {tid} of PID {} is still traced",
            self.pid
        );
        assert_ne!(
            self.state(tid),
            't',
            "thread {tid} of PID {} is in a tracing stop",
            self.pid
        );
    }
}

/// Injects in a thread of its own, and fails the test if the injection has
/// not returned two seconds after its deadline; returns its result and how
/// long it took.
fn inject(
    injector: &SyscallInjector,
    pid: Pid,
    nr: libc::c_long,
    args: &[u64],
    deadline: &Deadline,
) -> (io::Result<Injection>, Duration) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (injector, args, call_deadline) = (injector.clone(), args.to_vec(), deadline.clone());
    let id = identity(pid);
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(injector.inject(id, nr, &args, &call_deadline));
    });
    let limit = deadline.remaining() + Duration::from_secs(2);
    match rx.recv_timeout(limit) {
        Ok(result) => (result, start.elapsed()),
        Err(_) => panic!("the injection into PID {pid} hung: no result after {limit:?}"),
    }
}

fn getpid(target: &Target, deadline: &Deadline) -> (io::Result<Injection>, Duration) {
    inject(
        &target.injector(),
        target.pid,
        libc::SYS_getpid,
        &[],
        deadline,
    )
}

/// Asserts that a getpid injection succeeds.
fn assert_injects(target: &Target) -> Injection {
    let injection = getpid(target, &Deadline::after(SOON)).0.unwrap();
    assert_eq!(injection.ret, i64::from(target.pid));
    injection
}

/// How many times the injection started over.
fn retries(injection: &Injection) -> u32 {
    injection.retries
}

fn after(ms: u64) -> Deadline {
    Deadline::after(Duration::from_millis(ms))
}

const SLEEPS: &[libc::c_long] = &[libc::SYS_clock_nanosleep, libc::SYS_nanosleep];

/// Where `vfork` waits (arm64 has no vfork call: glibc uses clone).
#[cfg(target_arch = "x86_64")]
const VFORKS: &[libc::c_long] = &[libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const VFORKS: &[libc::c_long] = &[libc::SYS_clone, libc::SYS_clone3];

#[cfg(target_arch = "x86_64")]
const EPOLLS: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait];
#[cfg(not(target_arch = "x86_64"))]
const EPOLLS: &[libc::c_long] = &[libc::SYS_epoll_pwait];

// ---------------------------------------------------------------- waits

/// A tracer thread waits for stops blocked, woken by them, and by a timer
/// of its own (`/proc/self/timers` shows it) that ticks through a signal
/// with a handler; see `polling_waits.rs` for the other way.
#[test]
fn tracer_threads_wait_with_a_timer_of_their_own() {
    let _serial = serial("tracer_threads_wait_with_a_timer_of_their_own");
    let target = Target::spawn("tick", &[]);
    assert_injects(&target);
    let timers = fs::read_to_string("/proc/self/timers").unwrap();
    let signal = timers
        .lines()
        .find_map(|line| line.strip_prefix("signal: "))
        .and_then(|signal| signal.split('/').next())
        .and_then(|signal| signal.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no timer: {timers:?}"));
    assert!(
        (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal),
        "{timers}"
    );
    assert!(timers.contains("/tid."), "{timers}");
}

// ---------------------------------------------------------------- frozen

/// A cgroup of our own in a freezer hierarchy, removed when dropped.
struct Freezer {
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    /// One under cgroup v1's freezer hierarchy, if mounted.
    fn v1() -> Option<Freezer> {
        Freezer::under(Path::new("/sys/fs/cgroup/freezer"), false)
    }

    /// One under the cgroup v2 hierarchy, if mounted (alone, or beside v1).
    fn v2() -> Option<Freezer> {
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mounts.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap()))
        })?;
        Freezer::under(&mount, true)
    }

    fn under(base: &Path, v2: bool) -> Option<Freezer> {
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let dir = base.join(format!("heli-safety-{}", std::process::id()));
        if let Err(err) = fs::create_dir(&dir) {
            eprintln!("cannot create {}: {err}", dir.display());
            return None;
        }
        let freezer = Freezer { dir, v2 };
        let control = if v2 { "cgroup.freeze" } else { "freezer.state" };
        freezer.dir.join(control).exists().then_some(freezer)
    }

    fn add(&self, pid: Pid) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn frozen(&self) -> bool {
        if self.v2 {
            fs::read_to_string(self.dir.join("cgroup.events"))
                .unwrap()
                .lines()
                .any(|line| line == "frozen 1")
        } else {
            fs::read_to_string(self.dir.join("freezer.state"))
                .unwrap()
                .trim()
                == "FROZEN"
        }
    }

    fn set(&self, frozen: bool) {
        let (file, value) = match (self.v2, frozen) {
            (true, _) => ("cgroup.freeze", if frozen { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        fs::write(self.dir.join(file), value).unwrap();
        wait_for("the freezer", || self.frozen() == frozen);
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let control = if self.v2 {
            "cgroup.freeze"
        } else {
            "freezer.state"
        };
        let thawed = if self.v2 { "0" } else { "THAWED" };
        let _ = fs::write(self.dir.join(control), thawed);
        let parent = self.dir.parent().unwrap().join("cgroup.procs");
        if let Ok(pids) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = fs::write(&parent, pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A ticking target, frozen: the injection gives up at its deadline and
/// leaves it neither traced nor stopped; thawed, it ticks on and takes
/// injections again.
fn frozen_target_is_let_go(freezer: Freezer) {
    let target = Target::spawn("tick", &[]);
    let pid = target.pid;
    target.lines.skip_to("tick 1");
    freezer.add(pid);
    freezer.set(true);
    eprintln!("frozen: state {}", target.state(pid));
    let (result, took) = getpid(&target, &after(300));
    let err = result.unwrap_err();
    eprintln!(
        "frozen ({}): {err} (after {took:?})",
        if freezer.v2 { "v2" } else { "v1" }
    );
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let text = err.to_string();
    assert!(text.contains("frozen by the cgroup freezer"), "{text}");
    assert!(text.contains(&freezer.dir.display().to_string()), "{text}");
    assert!(
        took >= Duration::from_millis(300),
        "gave up early, after {took:?}"
    );
    assert!(took < Duration::from_millis(800), "took {took:?}");
    target.assert_let_go(pid);
    // Still frozen, so not ticking; thawed, it ticks on.
    target.lines.drain();
    target
        .lines
        .none_starting("tick", Duration::from_millis(100));
    freezer.set(false);
    target.lines.skip_to("tick");
    target.lines.skip_to("tick");
    assert_injects(&target);
    target.lines.skip_to("tick");
    target.assert_alive("after the thaw");
}

#[test]
fn frozen_target_is_let_go_at_the_deadline_v1() {
    let _serial = serial("frozen_target_is_let_go_at_the_deadline_v1");
    match Freezer::v1() {
        Some(freezer) => frozen_target_is_let_go(freezer),
        None => panic!("this test needs root and a cgroup v1 freezer (/sys/fs/cgroup/freezer)"),
    }
}

#[test]
fn frozen_target_is_let_go_at_the_deadline_v2() {
    let _serial = serial("frozen_target_is_let_go_at_the_deadline_v2");
    match Freezer::v2() {
        Some(freezer) => frozen_target_is_let_go(freezer),
        None => panic!("this test needs root and a cgroup v2 hierarchy"),
    }
}

/// A main thread waiting in `vfork` (state D) never stops for the
/// injection: it is let go at the deadline, resumes when its child exits,
/// and takes injections again.
#[test]
fn thread_in_uninterruptible_sleep_is_let_go_at_the_deadline() {
    let _serial = serial("thread_in_uninterruptible_sleep_is_let_go_at_the_deadline");
    let target = Target::spawn("vfork", &["1500"]);
    let pid = target.pid;
    wait_for("the main thread to wait in vfork", || {
        target.state(pid) == 'D'
    });
    let (result, took) = getpid(&target, &after(300));
    let err = result.unwrap_err();
    eprintln!("{err} (after {took:?})");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string().contains("uninterruptible sleep (state D)"),
        "{err}"
    );
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(800)).contains(&took),
        "{took:?}"
    );
    target.assert_let_go(pid);
    assert_eq!(target.state(pid), 'D');
    assert_eq!(target.lines.line(), "resumed");
    assert_injects(&target);
    target.lines.skip_to("tick");
    target.assert_alive("after its vfork");
}

/// A deadline called off ends the wait at once.
#[test]
fn called_off_injection_returns_at_once() {
    let _serial = serial("called_off_injection_returns_at_once");
    let target = Target::spawn("vfork", &["3000"]);
    let pid = target.pid;
    wait_for("the main thread to wait in vfork", || {
        target.state(pid) == 'D'
    });
    let deadline = after(10_000);
    let canceller = deadline.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        canceller.cancel();
    });
    let (result, took) = getpid(&target, &deadline);
    let err = result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("called off"), "{err}");
    assert!(took < Duration::from_millis(600), "took {took:?}");
    target.assert_let_go(pid);
}

/// An injected call that does not return at once (a nanosleep of 0.5 s):
/// at the deadline it is interrupted, the registers put back, and the
/// thread let go; it ticks on.
#[test]
fn call_that_does_not_return_is_interrupted_at_the_deadline() {
    let _serial = serial("call_that_does_not_return_is_interrupted_at_the_deadline");
    let target = Target::spawn("tick", &[]);
    let pid = target.pid;
    let timespec = u64::from_str_radix(target.value("timespec 0x").as_str(), 16).unwrap();
    let injector = target.injector();
    let (result, took) = inject(
        &injector,
        pid,
        libc::SYS_nanosleep,
        &[timespec, 0],
        &after(100),
    );
    let err = result.unwrap_err();
    eprintln!("{err} (after {took:?})");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("had not returned"), "{err}");
    assert!(took < Duration::from_millis(600), "took {took:?}");
    target.assert_let_go(pid);
    target.lines.drain();
    target.lines.skip_to("tick");
    assert_injects(&target);
    target.lines.skip_to("tick");
    target.assert_alive("after the injected sleep");
}

/// Injects a nanosleep of 0.5 s with a deadline of 200 ms, and freezes the
/// target 50 ms into it; returns the injection's error.
fn freeze_mid_call(target: &Target, freezer: &Freezer) -> io::Error {
    let pid = target.pid;
    let timespec = u64::from_str_radix(target.value("timespec 0x").as_str(), 16).unwrap();
    let injector = target.injector();
    let call = thread::spawn(move || {
        inject(
            &injector,
            pid,
            libc::SYS_nanosleep,
            &[timespec, 0],
            &after(200),
        )
    });
    thread::sleep(Duration::from_millis(50));
    freezer.add(pid);
    freezer.set(true);
    let (result, took) = call.join().unwrap();
    let err = result.unwrap_err();
    eprintln!("frozen mid-call: {err} (after {took:?})");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(took < Duration::from_millis(700), "took {took:?}");
    err
}

/// Frozen (cgroup v1) in the middle of the call, the thread holds our
/// registers until thawed: the caller gets its error at the deadline, the
/// tracer thread stays with the thread, puts the registers back once it
/// can, and lets it go; meanwhile, another injection cannot start.
#[test]
fn thread_frozen_mid_call_keeps_its_registers_until_thawed() {
    let _serial = serial("thread_frozen_mid_call_keeps_its_registers_until_thawed");
    let Some(freezer) = Freezer::v1() else {
        panic!("this test needs root and a cgroup v1 freezer (/sys/fs/cgroup/freezer)");
    };
    let target = Target::spawn("tick", &[]);
    let pid = target.pid;
    let text = freeze_mid_call(&target, &freezer).to_string();
    assert!(text.contains("held the registers"), "{text}");
    assert!(text.contains("frozen by the cgroup freezer"), "{text}");
    // Still in our hands, with our registers.
    thread::sleep(Duration::from_millis(200));
    assert_ne!(target.tracer(pid), 0);
    let (result, _) = getpid(&target, &after(100));
    let err = result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("before it could start"), "{err}");
    freezer.set(false);
    wait_for("the thread to be let go", || target.tracer(pid) == 0);
    target.lines.drain();
    target.lines.skip_to("tick");
    assert_injects(&target);
    target.lines.skip_to("tick");
    target.assert_alive("after the thaw");
}

/// Frozen (cgroup v2) in the middle of the call, the thread stops for
/// ptrace all the same: the call is interrupted at the deadline and the
/// registers put back, and the thread stays traced (frozen, with its own
/// registers) only until it can drop the trap the call left; thawed, it
/// ticks on.
#[test]
fn thread_frozen_mid_call_gets_its_registers_back_at_the_deadline() {
    let _serial = serial("thread_frozen_mid_call_gets_its_registers_back_at_the_deadline");
    let Some(freezer) = Freezer::v2() else {
        panic!("this test needs root and a cgroup v2 hierarchy");
    };
    let target = Target::spawn("tick", &[]);
    let pid = target.pid;
    let text = freeze_mid_call(&target, &freezer).to_string();
    assert!(text.contains("registers put back"), "{text}");
    assert!(text.contains("frozen by the cgroup freezer"), "{text}");
    assert!(freezer.frozen());
    freezer.set(false);
    wait_for("the thread to be let go", || target.tracer(pid) == 0);
    target.lines.drain();
    target.lines.skip_to("tick");
    assert_injects(&target);
    target.assert_alive("after the thaw");
}

// ---------------------------------------------------------------- signals

/// Real-time signals queued every ~20 µs during hundreds of injections:
/// the target is never killed, every signal reaches its handler, and every
/// injection succeeds or says that signals kept it from the call.
#[test]
fn signal_storm_never_kills_the_target() {
    let _serial = serial("signal_storm_never_kills_the_target");
    let mut target = Target::spawn("storm", &[]);
    let pid = target.pid;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            let value = libc::sigval {
                sival_ptr: std::ptr::null_mut(),
            };
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: sigqueue takes integers and a sigval by value.
                let res = unsafe { libc::sigqueue(pid.get() as i32, libc::SIGRTMIN() + 2, value) };
                assert_eq!(res, 0, "sigqueue: {}", io::Error::last_os_error());
                sent.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(20) {}
            }
        })
    };
    let injector = target.injector();
    let (mut made, mut refused, mut retried) = (0, 0, 0);
    let start = Instant::now();
    for round in 0..300 {
        let (result, _) = inject(&injector, pid, libc::SYS_getpid, &[], &after(100));
        match result {
            Ok(injection) => {
                assert_eq!(injection.ret, i64::from(pid));
                made += 1;
                retried += retries(&injection);
            }
            Err(err) => {
                // Signals kept coming until the deadline, or the processors
                // were too busy for the thread to stop (or the injection to
                // start) in time.
                assert_eq!(err.kind(), io::ErrorKind::TimedOut, "round {round}: {err}");
                let text = err.to_string();
                assert!(
                    [
                        "signals",
                        "did not stop",
                        "could not start",
                        "given up",
                        "held the registers"
                    ]
                    .iter()
                    .any(|why| text.contains(why)),
                    "round {round}: {err}"
                );
                refused += 1;
            }
        }
        target.assert_alive(&format!("at injection {round}"));
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    // Every signal sent reaches the handler (the last ones may still be on
    // their way).
    let mut counted = 0;
    wait_for("every signal to be handled", || {
        target.stdin.write_all(b"?\n").unwrap();
        counted = target.value("count ").parse::<u64>().unwrap();
        counted >= sent
    });
    eprintln!(
        "{sent} signals in {took:?}; 300 injections: {made} made ({retried} restarts), \
         {refused} gave up at their deadline"
    );
    assert_eq!(counted, sent);
    assert!(made > 0, "no injection got through the storm");
    thread::sleep(Duration::from_millis(100));
    target.assert_alive("after the storm");
}

// ---------------------------------------------------------------- rseq

/// A thread that sits in an rseq critical section: each injection aborts
/// the section (the stop preempted it, and the injected call made the
/// kernel forget the section: only an abort keeps it safe), and the
/// section is still registered afterwards, and aborts when preempted.
/// Plain stops, for comparison, abort it only when the kernel saw a
/// preemption or migration meanwhile.
#[cfg(target_arch = "x86_64")]
#[test]
fn rseq_critical_section_aborts_once_per_injection() {
    let _serial = serial("rseq_critical_section_aborts_once_per_injection");
    let target = Target::spawn("rseq", &[]);
    let pid = target.pid;
    let counter = u64::from_str_radix(target.value("aborts 0x").as_str(), 16).unwrap();
    let area = u64::from_str_radix(target.value("area 0x").as_str(), 16).unwrap();
    let memory = heli_proc::Memory::new(pid);
    let aborts = || memory.read_u64(counter).unwrap();
    // The area's rseq_cs: the section's descriptor while it is registered.
    let registered = || memory.read_u64(area + 8).unwrap() != 0;
    wait_for("the section to be entered", registered);
    let rounds = 200;
    // Aborts while nobody touches it (preemptions, migrations).
    let before = aborts();
    thread::sleep(Duration::from_millis(100));
    let idle = aborts() - before;
    // Plain stops, by hand.
    let raw = nix::unistd::Pid::from_raw(pid.get() as i32);
    let before = aborts();
    {
        let waits = target.waits();
        let _waits = waits.lock();
        for _ in 0..rounds {
            nix::sys::ptrace::seize(raw, nix::sys::ptrace::Options::empty()).unwrap();
            nix::sys::ptrace::interrupt(raw).unwrap();
            nix::sys::wait::waitpid(raw, Some(nix::sys::wait::WaitPidFlag::__WALL)).unwrap();
            nix::sys::ptrace::detach(raw, None).unwrap();
        }
    }
    thread::sleep(Duration::from_millis(10));
    let plain = aborts() - before;
    assert!(registered(), "plain stops left the section unregistered");
    // Injections.
    let injector = target.injector();
    let before = aborts();
    for _ in 0..rounds {
        let (result, _) = inject(
            &injector,
            pid,
            libc::SYS_getpid,
            &[],
            &Deadline::after(SOON),
        );
        assert_eq!(result.unwrap().ret, i64::from(pid));
    }
    thread::sleep(Duration::from_millis(10));
    let injected = aborts() - before;
    eprintln!(
        "aborts: {idle} in 100 ms idle, {plain} in {rounds} plain stops, {injected} in {rounds} \
         injections"
    );
    assert!(
        injected >= rounds * 9 / 10,
        "{injected} aborts in {rounds} injections"
    );
    assert!(registered(), "the injections left the section unregistered");
    // And it still aborts when preempted.
    let before = aborts();
    wait_for("an abort after the injections", || aborts() > before);
    target.assert_alive("after the injections");
}

// ---------------------------------------------------------------- dispatch

/// A thread with Syscall User Dispatch on is refused, and its SIGSYS
/// handler never runs; the granter says why.
#[test]
fn syscall_user_dispatch_is_refused() {
    let _serial = serial("syscall_user_dispatch_is_refused");
    let target = Target::spawn("dispatch", &[]);
    let pid = target.pid;
    for _ in 0..20 {
        let (result, _) = getpid(&target, &Deadline::after(SOON));
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("Syscall User Dispatch"), "{err}");
    }
    target
        .lines
        .none_starting("sigsys", Duration::from_millis(200));
    let mut granter = YamaGranter::new(target.waits());
    let me = identity(Pid::this());
    let err = granter
        .grant(identity(pid), me, &Deadline::after(SOON))
        .unwrap_err();
    assert!(err.to_string().contains("Syscall User Dispatch"), "{err}");
    target
        .lines
        .none_starting("sigsys", Duration::from_millis(100));
    target.assert_let_go(pid);
    target.assert_alive("after the refusals");
}

// ---------------------------------------------------------------- exec

/// Injects into `target` while one of its threads runs `execve`: the
/// injection starts over, in the new program (`sleep`), within its
/// deadline; and the next one goes through at once.
fn assert_injects_across_exec(target: &Target) {
    let (result, took) = getpid(target, &after(3000));
    let injection = result.unwrap();
    eprintln!("exec during the injection: {injection:?} after {took:?}");
    assert_eq!(injection.ret, i64::from(target.pid));
    assert!(retries(&injection) >= 1, "{injection:?}");
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert_eq!(target.comm(), "sleep");
    assert_injects(target);
}

/// Another thread's `execve` while the chosen thread has not stopped yet
/// (the main thread, in vfork) ends the wait: the injection starts over in
/// the new program, within its deadline.
#[test]
fn exec_by_another_thread_ends_the_wait() {
    let _serial = serial("exec_by_another_thread_ends_the_wait");
    let target = Target::spawn("exec-main", &["300"]);
    let pid = target.pid;
    wait_for("two threads", || target.threads().len() == 2);
    let execer = target.threads()[1];
    wait_for("the main thread to wait in vfork", || {
        target.state(pid) == 'D' && target.blocked_in(pid, VFORKS)
    });
    wait_for("the second thread asleep", || {
        target.blocked_in(execer, SLEEPS)
    });
    assert_injects_across_exec(&target);
    target.assert_let_go(pid);
    target.assert_alive("after its exec");
}

/// The same when the chosen thread is not the main one (it waits in
/// vfork): it dies without ever stopping, and the injection starts over.
#[test]
fn exec_while_another_thread_is_seized() {
    let _serial = serial("exec_while_another_thread_is_seized");
    let target = Target::spawn("exec-thread", &["300"]);
    wait_for("three threads", || target.threads().len() == 3);
    let (vforker, execer) = (target.threads()[1], target.threads()[2]);
    wait_for("the second thread to wait in vfork", || {
        target.state(vforker) == 'D' && target.blocked_in(vforker, VFORKS)
    });
    wait_for("the third thread asleep", || {
        target.blocked_in(execer, SLEEPS)
    });
    assert_injects_across_exec(&target);
    target.assert_alive("after its exec");
}

// ---------------------------------------------------------------- threads

/// A process whose main thread called pthread_exit is alive, and its other
/// threads take injections and grants.
#[test]
fn process_whose_main_thread_exited_takes_injections() {
    let _serial = serial("process_whose_main_thread_exited_takes_injections");
    let mut target = Target::spawn("zombie-main", &[]);
    let pid = target.pid;
    wait_for("the main thread to exit", || target.state(pid) == 'Z');
    let id = ProcFs.identity(pid).unwrap().expect("alive");
    assert!(ProcFs.is_running(id));
    let info = ProcFs.process(pid).unwrap().unwrap();
    assert!(!info.state.is_gone(), "{:?}", info.state);
    for _ in 0..20 {
        let injection = assert_injects(&target);
        assert_ne!(injection.tid, pid);
    }
    target.stdin.write_all(b"?\n").unwrap();
    assert_eq!(target.lines.line(), "alive");
    // The granter gets as far as the prctl (EINVAL on a kernel without Yama).
    let mut granter = YamaGranter::new(target.waits());
    match granter.grant(id, identity(Pid::this()), &Deadline::after(SOON)) {
        Ok(()) => granter.revoke(id, &Deadline::after(SOON)).unwrap(),
        Err(err) => assert!(err.to_string().contains("EINVAL"), "{err}"),
    }
    target.assert_alive("after the injections");
}

/// A thread waiting in io_uring_enter (which a stop ends with EINTR) is
/// taken last.
#[test]
fn thread_in_io_uring_enter_is_taken_last() {
    let _serial = serial("thread_in_io_uring_enter_is_taken_last");
    let target = Target::spawn("io-uring", &[]);
    let pid = target.pid;
    wait_for("two threads", || target.threads().len() == 2);
    let sleeper = target.threads()[1];
    wait_for("the main thread in io_uring_enter", || {
        target.syscall(pid) == Some(libc::SYS_io_uring_enter)
    });
    wait_for("the second thread asleep", || {
        target.blocked_in(sleeper, SLEEPS)
    });
    for _ in 0..20 {
        let injection = assert_injects(&target);
        assert_eq!(
            injection.tid, sleeper,
            "injected into the thread in io_uring_enter"
        );
    }
    target
        .lines
        .none_starting("io_uring_enter returned", Duration::from_millis(200));
}

/// A non-main thread killed by the injected call (its own seccomp filter)
/// is reported as that thread's end, not the process's; the process lives
/// on and takes injections.
#[test]
fn thread_killed_during_the_call_is_reported_as_a_thread() {
    let _serial = serial("thread_killed_during_the_call_is_reported_as_a_thread");
    let target = Target::spawn("thread-killed", &[]);
    let pid = target.pid;
    wait_for("two threads", || target.threads().len() == 2);
    let busy = target.threads()[1];
    // The main thread in epoll_wait, which the injector takes last.
    wait_for("the main thread in epoll_wait", || {
        target.blocked_in(pid, EPOLLS)
    });
    let injector = target.injector().allow_seccomp(true);
    let (result, _) = inject(
        &injector,
        pid,
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
        &Deadline::after(SOON),
    );
    let err = result.unwrap_err();
    eprintln!("{err}");
    assert_ne!(err.kind(), io::ErrorKind::NotFound, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("thread {busy} of PID {pid}")),
        "{text}"
    );
    assert!(
        text.contains("lives on") && text.contains("signal 31"),
        "{text}"
    );
    wait_for("one thread", || target.threads().len() == 1);
    assert!(ProcFs.is_running(identity(pid)));
    target.assert_alive("after its thread's death");
    assert_injects(&target);
    target.assert_alive("after an injection into its main thread");
}
