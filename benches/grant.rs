//! Grant latency: from a client's `GRANT_ACCESS` to the controller's
//! verified reply, over the named pipes, for a target busy in Python, asleep,
//! and blocked in `read()`; and the cost of the injection alone.
//!
//! `cargo bench --bench grant` prints a table of percentiles over 1,000
//! grants per case (the targets: median <= 2 ms, p99 <= 5 ms) and
//! then runs the same cases under criterion. Under `cargo test` it makes a
//! few grants per case only, to keep the bench code working.
//!
//! On a kernel without Yama, `prctl(PR_SET_PTRACER)` fails with EINVAL in
//! the target: the Yama rows then time the whole path (request, ptrace
//! injection, the prctl itself, the reply) ending in an `ERROR` reply
//! instead of `READY`; the work done is the same.

#![allow(missing_docs)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use heli::core::{Client, Controller, ErrorKind};
use heli::grant::{AutoGranter, ChildWaits, GranterChoice, ProcessSupervisor, SyscallInjector};
use heli::transport::FifoTransport;

use common::{benchmarking, percentiles, python, time_each};

const STATES: [(&str, &str); 3] = [
    ("busy in Python", "while True: pass"),
    ("asleep", "import time; time.sleep(100000)"),
    ("blocked in read()", "import sys; sys.stdin.buffer.read()"),
];

/// The target's command; its stdin is a pipe whose writing end the caller
/// keeps open and never writes to, so the `read()` case blocks on it.
fn target_command(code: &str) -> (Command, std::os::fd::OwnedFd) {
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut command = Command::new(python());
    command
        .args(["-c", code])
        .stdin(Stdio::from(read))
        .stdout(Stdio::null());
    (command, write)
}

/// A controller serving `code` in a thread; grants through `choice`.
struct Running {
    client: Client<FifoTransport>,
    thread: Option<thread::JoinHandle<()>>,
    /// The process the grants go to (a grant never goes to the controller,
    /// which runs in this process).
    grantee: std::process::Child,
    _dir: tempfile::TempDir,
    _stdin: std::os::fd::OwnedFd,
}

impl Running {
    fn start(code: &str, choice: GranterChoice) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let transport = FifoTransport::new(dir.path().join("pipes"));
        let (command, stdin) = target_command(code);
        let supervisor = ProcessSupervisor::new(command);
        let granter = AutoGranter::choose(choice, supervisor.child_waits()).unwrap();
        let controller = Controller::new(transport.clone(), granter, supervisor)
            .grace(Duration::from_millis(100));
        let thread = thread::spawn(move || {
            controller.run().unwrap();
        });
        let client = Client::new(transport).timeout(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.target_pid().is_err() {
            assert!(Instant::now() < deadline, "controller did not start");
            thread::sleep(Duration::from_millis(5));
        }
        // Let the interpreter reach its steady state.
        thread::sleep(Duration::from_millis(300));
        let grantee = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        Running {
            client,
            thread: Some(thread),
            grantee,
            _dir: dir,
            _stdin: stdin,
        }
    }

    /// One grant; `Ok` for READY and for the EINVAL of a kernel without Yama.
    fn grant(&self) {
        let grantee = heli::core::Pid::new(self.grantee.id()).unwrap();
        match self.client.grant_access(grantee) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Refused && err.message().contains("EINVAL") => {}
            Err(err) => panic!("grant failed: {err}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.client.terminate();
        let _ = self.grantee.kill();
        let _ = self.grantee.wait();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A target we spawned ourselves (we are its parent), for the bare injection.
struct Bare {
    child: std::process::Child,
    /// The target, as the injector names it.
    id: heli::core::ProcessId,
    injector: SyscallInjector,
    _stdin: std::os::fd::OwnedFd,
}

impl Bare {
    fn start(code: &str) -> Bare {
        let (mut command, stdin) = target_command(code);
        let child = command.spawn().unwrap();
        thread::sleep(Duration::from_millis(300));
        let pid = heli::core::Pid::new(child.id()).unwrap();
        let id = heli::core::Processes::identity(&heli::proc::ProcFs, pid)
            .unwrap()
            .expect("it runs");
        Bare {
            child,
            id,
            injector: SyscallInjector::new(ChildWaits::default()),
            _stdin: stdin,
        }
    }

    fn inject(&self) {
        let pid = self.id.pid;
        assert_eq!(
            self.injector
                .syscall(
                    self.id,
                    libc::SYS_getpid,
                    &[],
                    &heli::core::Deadline::after(Duration::from_secs(5))
                )
                .unwrap(),
            u64::from(pid)
        );
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn table(rounds: usize) {
    println!(
        "\n{rounds} grants per case (kernel ptrace_scope: {})",
        heli::grant::PtraceScope::current().unwrap()
    );
    println!("| case | target | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (state, code) in STATES {
        for choice in [GranterChoice::Noop, GranterChoice::Yama] {
            let running = Running::start(code, choice);
            let samples = time_each(rounds, || running.grant(), drop);
            let (median, p99, max) = percentiles(samples);
            println!(
                "| GRANT_ACCESS -> reply, {choice} granter | {state} | {median:.3} | {p99:.3} | {max:.3} |"
            );
        }
        let bare = Bare::start(code);
        let (median, p99, max) = percentiles(time_each(rounds, || bare.inject(), drop));
        println!("| injection of getpid alone | {state} | {median:.3} | {p99:.3} | {max:.3} |");
    }
    let _ = std::io::stdout().flush();
}

fn criterion_cases(c: &mut Criterion) {
    let mut group = c.benchmark_group("grant");
    for (state, code) in STATES {
        let running = Running::start(code, GranterChoice::Yama);
        group.bench_function(format!("yama, target {state}"), |b| {
            b.iter(|| running.grant())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3));
    targets = criterion_cases
}

fn main() {
    table(if benchmarking() { 1000 } else { 5 });
    if benchmarking() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
